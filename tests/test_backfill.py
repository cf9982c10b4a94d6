"""`tokcal backfill` on checkpoints from a real (tiny) Trainer run, into a real MLflow
server, the local store and W&B offline files; no mocks."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.mlflow_server import free_port
from tests.helpers.training import train_tiny
from tokcal.cli.main import main
from tokcal.core.spec import DecisionSpec
from tokcal.jobs.backfill import MARKER, backfill
from tokcal.jobs.checkpoints import resolve_checkpoints
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.settings import TrackingSettings
from tokcal.trackers.local import LocalTracker, read_local_store

pytestmark = pytest.mark.slow  # a real (tiny) training run and several scoring passes

STEPS = [2, 4, 6]
KEY = "eval_decision_samples"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bpe_checkpoint: Path) -> Path:
    """A real 6-step fine-tune saving checkpoint-2, -4 and -6, plus its eval.jsonl."""
    out = tmp_path_factory.mktemp("train") / "out"
    train_tiny(tiny_bpe_checkpoint, out, max_steps=6, eval_steps=2, n_train=16, n_eval=9)
    for p in out.glob("checkpoint-*"):  # the shared checkpoints stay as they are
        p.chmod(0o555)
    return out


@pytest.fixture(scope="module")
def expected(run_dir: Path) -> dict[int, object]:
    """What `tokcal extract` gives for each checkpoint."""
    return {s: score_checkpoint(run_dir / f"checkpoint-{s}", run_dir / "eval.jsonl", DecisionSpec(), progress=False)
            for s in STEPS}


def linked(tmp_path: Path, run_dir: Path, steps=STEPS) -> Path:
    """An output folder of our own whose checkpoint-N entries link to the trained ones."""
    out = tmp_path / "out"
    out.mkdir()
    for s in steps:
        (out / f"checkpoint-{s}").symlink_to(run_dir / f"checkpoint-{s}")
    return out


def cli(*argv: str) -> int:
    return main(["backfill", *map(str, argv), "--quiet"])


def test_checkpoints_and_steps(run_dir: Path, tmp_path: Path):
    plan = resolve_checkpoints([run_dir])
    assert [s for _, s in plan] == STEPS
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [s for _, s in resolve_checkpoints([f"{run_dir}/checkpoint-[46]"])] == [4, 6]
    renamed = tmp_path / "renamed"  # the step comes from trainer_state.json, not the name
    shutil.copytree(run_dir / "checkpoint-2", renamed)
    assert resolve_checkpoints([renamed]) == [(renamed.resolve(), 2)]


def test_mlflow_resume_idempotent(run_dir: Path, expected, mlflow_server: str, tmp_path: Path, capsys):
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.create_experiment(f"backfill-{tmp_path.name}")
    run_id = client.create_run(exp).info.run_id
    client.log_batch(run_id, metrics=[Metric(KEY, 9.0, 0, 100)], synchronous=True)  # a later step
    client.set_terminated(run_id, "FINISHED")
    # --metrics all: every scalar is a metric series (checked one by one below).
    flags = ["--data", run_dir / "eval.jsonl", "--backend", "mlflow", "--tracking-uri", mlflow_server,
             "--run-id", run_id, "--output-dir", tmp_path / "rescored", "--metrics", "all"]

    # Interrupted after the first checkpoint, then run again on all: the rest is added.
    assert cli(run_dir / "checkpoint-2", *flags) == 0
    assert cli(run_dir, *flags) == 0
    out = capsys.readouterr().out
    assert "2 logged, 1 skipped, 0 failed" in out
    assert cli(run_dir, *flags) == 0  # again: nothing new
    assert "0 logged, 3 skipped, 0 failed" in capsys.readouterr().out

    for key, _ in expected[2].metrics().scalars.items():
        hist = client.get_metric_history(run_id, key)
        steps = sorted(m.step for m in hist)
        # NaN (e.g. the precision of a label never predicted) is not logged.
        finite = [s for s in STEPS if not math.isnan(expected[s].metrics().scalars[key])]
        assert steps == ([*finite, 100] if key == KEY else finite), key  # once each
        for m in hist:
            if m.step in expected:
                assert m.value == pytest.approx(expected[m.step].metrics().scalars[key], rel=1e-12, abs=1e-12), key
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["tokcal_backfill"] == "true"
    arts = {a.path for a in client.list_artifacts(run_id, "tokcal/eval")}
    assert {f"tokcal/eval/bins_step_00000{s}.json" for s in STEPS} <= arts
    bins = client.download_artifacts(run_id, "tokcal/eval/bins_step_000004.json", str(tmp_path))
    assert json.loads(Path(bins).read_text())["tags"] == MARKER
    for s in STEPS:  # the per-decision JSONL is what `tokcal extract` writes
        rows = [json.loads(x) for x in (tmp_path / "rescored" / f"checkpoint-{s}.decisions.jsonl").read_text().splitlines()]
        assert rows == json.loads(json.dumps(expected[s].records()))


FLIPS = ("eval_decision_flips_to_wrong", "eval_decision_flips_to_right", "eval_decision_forgotten")


def test_mlflow_default_metrics_are_the_headline_set(run_dir: Path, expected, mlflow_server: str, tmp_path: Path):
    """Without --metrics (and no tokcal.json), the headline set becomes metric series; every
    scalar is in the evaluation's bins artifact."""
    import mlflow

    from tests.test_dashboard import HEADLINE

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run_id = client.create_run(client.create_experiment(f"backfill-default-{tmp_path.name}")).info.run_id
    assert cli(run_dir, "--data", run_dir / "eval.jsonl", "--backend", "mlflow", "--tracking-uri", mlflow_server,
               "--run-id", run_id, "--output-dir", tmp_path / "rescored") == 0
    every = {s: {k: v for k, v in expected[s].metrics().scalars.items() if not math.isnan(v)} for s in STEPS}
    for before, after in zip(STEPS, STEPS[1:]):
        every[after].update(flips_between(expected[before], expected[after]))
    logged = {(k, int(m.step)) for k in client.get_run(run_id).data.metrics
              for m in client.get_metric_history(run_id, k)}
    assert logged == {(k, s) for s in STEPS for k in every[s] if k in HEADLINE}
    assert {k for k, _ in logged} >= {"eval_decision_ece", "eval_avg_p_accept", "eval_decision_flips_to_wrong"}
    for s in STEPS:
        table = json.loads(Path(client.download_artifacts(run_id, f"tokcal/eval/bins_step_{s:06d}.json",
                                                          str(tmp_path))).read_text())
        assert table["scalars"] == pytest.approx(every[s], rel=1e-12)


def stored(record: dict) -> dict[str, float]:
    """A local-store record's scalars but the flips (``extract`` has one checkpoint, so no
    flips); JSON keeps an undefined metric (NaN) as null."""
    return {k: math.nan if v is None else v for k, v in record["scalars"].items() if k not in FLIPS}


def flips_between(before, after) -> dict[str, float]:
    """The flips from one extract result to the next, counted directly."""
    was, now = before.probs.argmax(1) == before.gt, after.probs.argmax(1) == after.gt
    return {FLIPS[0]: float((was & ~now).sum()), FLIPS[1]: float((~was & now).sum()), FLIPS[2]: float((was & ~now).sum())}


def test_bad_checkpoint_others_logged_then_completed(run_dir: Path, expected, tmp_path: Path, capsys):
    out = linked(tmp_path, run_dir, [2, 6])
    broken = out / "checkpoint-4"
    broken.mkdir()
    shutil.copy(run_dir / "checkpoint-4" / "config.json", broken)
    shutil.copy(run_dir / "checkpoint-4" / "trainer_state.json", broken)
    tracker = LocalTracker(tmp_path / "runs")
    state = {"trackers": [tracker.describe()], **TrackingSettings(backend="local").to_dict()}
    (out / "tokcal.json").write_text(json.dumps(state))

    assert cli(out, "--data", run_dir / "eval.jsonl", "--output-dir", tmp_path / "o") == 1  # run from tokcal.json
    text = capsys.readouterr()
    assert "2 logged, 0 skipped, 1 failed" in text.out
    assert "checkpoint-4" in text.out and "no model weights" in text.out and "failed" in text.err
    assert sorted(r["step"] for r in read_local_store(tracker.directory)) == [2, 6]

    shutil.rmtree(broken)
    broken.symlink_to(run_dir / "checkpoint-4")  # fixed: the run completes, nothing doubled
    assert cli(out, "--data", run_dir / "eval.jsonl", "--output-dir", tmp_path / "o") == 0
    assert "1 logged, 2 skipped, 0 failed" in capsys.readouterr().out
    recs = read_local_store(tracker.directory)
    assert [r["step"] for r in recs] == [2, 6, 4]
    for r in recs:
        assert r["tags"] == MARKER
        assert stored(r) == pytest.approx(expected[r["step"]].metrics().scalars, rel=1e-12, nan_ok=True)
        assert r["images"]  # the reliability diagram and histograms at that step
    # Flips count between the checkpoints scored in one call: 6 after 2 in the first, none
    # for 4 (alone in the second call).
    assert {k: recs[1]["scalars"][k] for k in FLIPS} == flips_between(expected[2], expected[6])
    assert not any(k in recs[0]["scalars"] or k in recs[2]["scalars"] for k in FLIPS)

    assert cli(out / "checkpoint-2", "--data", run_dir / "eval.jsonl", "--output-dir", tmp_path / "o", "--force",
               "--backend", "local", "--run-id", tracker.run_id, "--local-dir", tmp_path / "runs",
               "--labels", "Accept", "Reject") == 0
    assert sorted(r["step"] for r in read_local_store(tracker.directory)) == [2, 2, 4, 6]  # --force logs again


def test_library_tokenises_once_and_again_for_another_template(run_dir: Path, tmp_path: Path):
    out = linked(tmp_path, run_dir, [2, 4])
    other = out / "checkpoint-6"
    shutil.copytree(run_dir / "checkpoint-6", other)
    other.chmod(0o755)
    tpl = other / "chat_template.jinja"
    tpl.chmod(0o644)
    tpl.write_text(tpl.read_text().replace("<|im_start|>", "<|im_start|> ", 1))
    with LocalTracker(tmp_path / "runs") as tracker:
        report = backfill([out], run_dir / "eval.jsonl", tracker, progress=False, output_dir=tmp_path / "o")
    assert [r.status for r in report.results] == ["logged"] * 3
    assert report.tokenizations == 2  # checkpoints 2 and 4 share one tokenisation
    assert report.ok and "3 logged, 0 skipped, 0 failed" in report.summary()


def test_checkpoints_with_the_same_tokenizer_files_share_one_tokenizer(run_dir: Path, tmp_path: Path):
    from tokcal.jobs.checkpoints import load_tokenizer

    first = load_tokenizer(run_dir / "checkpoint-2")
    assert load_tokenizer(run_dir / "checkpoint-4") is first and load_tokenizer(run_dir / "checkpoint-6") is first
    changed = tmp_path / "checkpoint-8"
    shutil.copytree(run_dir / "checkpoint-6", changed)
    changed.chmod(0o755)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    jinja = changed / "chat_template.jinja"
    if jinja.is_file():  # transformers 5 keeps the template in its own file
        jinja.chmod(0o644)
        jinja.write_text(template)
    else:
        cfg_file = changed / "tokenizer_config.json"
        cfg_file.chmod(0o644)
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "chat_template": template}))
    other = load_tokenizer(changed)
    assert other is not first and other.chat_template == template
    assert first.chat_template != template


def test_each_checkpoints_model_is_freed_and_nothing_stays_frozen(run_dir: Path, tmp_path: Path):
    import gc

    from transformers import PreTrainedModel

    def models() -> int:
        return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())

    gc.collect()
    before = models()
    report = backfill([linked(tmp_path, run_dir)], run_dir / "eval.jsonl", LocalTracker(tmp_path / "runs"),
                      output_dir=tmp_path / "o", progress=False)
    assert report.ok and len(report.logged) == len(STEPS)
    assert models() == before  # no collection here: backfill freed every checkpoint's model itself
    assert gc.get_freeze_count() == 0  # what it froze for its faster collections is collectable again


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: what shows any write,
    also for root, whom read-only permission bits do not stop."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_checkpoint_folders_are_only_read(run_dir: Path, expected, tmp_path: Path):
    """The per-decision files go to tokcal/backfill/ in the output folder, never into the
    (read-only) checkpoint folders; another prefix gets its own file names."""
    out = tmp_path / "out"
    out.mkdir()
    for s in (2, 4):
        shutil.copytree(run_dir / f"checkpoint-{s}", out / f"checkpoint-{s}")
        (out / f"checkpoint-{s}").chmod(0o555)
    before = {s: snapshot(out / f"checkpoint-{s}") for s in (2, 4)}
    shared = snapshot(run_dir)
    tracker = LocalTracker(tmp_path / "runs")
    run = ["--backend", "local", "--run-id", tracker.run_id, "--local-dir", tmp_path / "runs"]
    assert cli(out / "checkpoint-2", "--data", run_dir / "eval.jsonl", *run) == 0  # one checkpoint folder
    assert cli(out, "--data", run_dir / "eval.jsonl", *run) == 0  # the output folder: checkpoint-4 added
    assert cli(out, "--data", run_dir / "eval.jsonl", *run, "--metric-prefix", "eval_again_") == 0
    assert {s: snapshot(out / f"checkpoint-{s}") for s in (2, 4)} == before
    assert sorted(p.name for p in (out / "tokcal" / "backfill").iterdir()) == [
        "checkpoint-2.decisions.jsonl", "checkpoint-2.eval_again.decisions.jsonl",
        "checkpoint-4.decisions.jsonl", "checkpoint-4.eval_again.decisions.jsonl"]
    for s in (2, 4):
        for name in (f"checkpoint-{s}.decisions.jsonl", f"checkpoint-{s}.eval_again.decisions.jsonl"):
            rows = [json.loads(x) for x in (out / "tokcal" / "backfill" / name).read_text().splitlines()]
            assert rows == json.loads(json.dumps(expected[s].records())), name
    assert [r["step"] for r in read_local_store(tracker.directory)] == [2, 4, 2, 4]
    # Symlinked checkpoints of a shared run: nothing is written where they live.
    (tmp_path / "l").mkdir()
    links = linked(tmp_path / "l", run_dir)
    assert cli(links, "--data", run_dir / "eval.jsonl", *run, "--force") == 0
    assert snapshot(run_dir) == shared
    assert len(list((links / "tokcal" / "backfill").iterdir())) == len(STEPS)  # beside the links


def test_an_output_folder_that_cannot_be_written_is_refused_before_scoring(run_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(run_dir / "checkpoint-2", out / "checkpoint-2")
    (out / "tokcal").write_text("a file where the folder would go")
    tracker = LocalTracker(tmp_path / "runs")
    assert cli(out, "--data", run_dir / "eval.jsonl", "--backend", "local", "--run-id", tracker.run_id,
               "--local-dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip()
    assert "the per-decision files (--output-dir picks another folder)" in err and "\n" not in err, err
    assert read_local_store(tracker.directory) == []


def test_errors_before_scoring(run_dir: Path, mlflow_server: str, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = LocalTracker(tmp_path / "runs")
    local = ["--backend", "local", "--run-id", tracker.run_id, "--local-dir", tmp_path / "runs",
             "--output-dir", tmp_path / "o"]
    data = ["--data", run_dir / "eval.jsonl"]
    (tmp_path / "empty").mkdir()
    cases = [
        ([tmp_path / "empty", *data, *local], "no checkpoint-N folders in"),
        ([tmp_path / "missing", *data, *local], "not found"),
        ([f"{run_dir}/checkpoint-9*", *data, *local], "no checkpoint folder matches"),
        ([run_dir, "--data", tmp_path / "nope.jsonl", *local], "data file not found"),
        ([run_dir, *data], "no run to backfill into"),
        ([run_dir, *data, "--backend", "local", "--run-id", "nope", "--local-dir", tmp_path / "runs"],
         "expected an existing local run 'nope'"),
        ([run_dir, *data, "--backend", "mlflow", "--tracking-uri", mlflow_server, "--run-id", "0" * 32],
         "could not open MLflow run"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    cases.append(([run_dir, "--data", bad, *local], "has no assistant answer"))
    for argv, msg in cases:
        assert cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing was scored
    assert read_local_store(tracker.directory) == []


def test_wandb_offline_refused_before_scoring(run_dir: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = linked(tmp_path, run_dir)
    state = {"trackers": [{"backend": "wandb", "run_id": "abc123", "project": "p", "entity": None,
                           "mode": "offline"}], **TrackingSettings(backend="wandb").to_dict()}
    (out / "tokcal.json").write_text(json.dumps(state))
    for extra in ([], ["--backend", "wandb", "--run-id", "xyz789", "--project", "q"]):
        assert cli(out, "--data", run_dir / "eval.jsonl", "--output-dir", tmp_path / "o", *extra) == 2
        err = capsys.readouterr().err
        assert "W&B cannot resume an offline run" in err and "wandb sync" in err
    assert not (tmp_path / "o").exists()


def test_wandb_rows_carry_global_step(run_dir: Path, expected, tmp_path: Path, monkeypatch):
    """The resume itself needs a server; the rows are checked in an offline run file."""
    from tests.helpers.wandb_reader import find_run_file, history_rows
    from tokcal.trackers.wandb import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    tracker = WandbTracker(project="tokcal-test", mode="offline", directory=str(tmp_path))
    try:
        report = backfill([run_dir], run_dir / "eval.jsonl", tracker, progress=False, output_dir=tmp_path / "o")
    finally:
        tracker.close()
    assert report.ok and len(report.logged) == 3
    run_file = find_run_file(tmp_path)
    waited = 0.0
    while True:  # wandb-core can still be writing the file when finish() returns; give it a moment
        rows = [r for r in history_rows(run_file) if "eval/decision_samples" in r]
        if len(rows) == 3 or waited > 20:
            break
        time.sleep(0.5)
        waited += 0.5
    print(f"rows after {waited:.1f} s")
    assert [r["train/global_step"] for r in rows] == STEPS
    for r in rows:
        s = r["train/global_step"]
        assert r["eval/decision_ece"] == pytest.approx(expected[s].metrics().scalars["eval_decision_ece"], rel=1e-12)
        assert r["eval/tag_tokcal_backfill"] == "true"
        assert r["eval/decision_reliability"]["_type"] == "image-file"
        assert r["eval/decision_bins"]["_type"] == "table-file"


def test_peft_lora_checkpoint(tiny_bpe_checkpoint: Path, run_dir: Path, tmp_path: Path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_bpe_checkpoint))
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                                                 init_lora_weights=False))
    ckpt = tmp_path / "lora" / "checkpoint-10"
    peft_model.save_pretrained(str(ckpt))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_bpe_checkpoint)

    tracker = LocalTracker(tmp_path / "runs")
    assert cli(tmp_path / "lora", "--data", run_dir / "eval.jsonl", "--backend", "local", "--run-id",
               tracker.run_id, "--local-dir", tmp_path / "runs") == 0
    (rec,) = read_local_store(tracker.directory)
    assert rec["step"] == 10
    spec = DecisionSpec()
    want = score_checkpoint(ckpt, run_dir / "eval.jsonl", spec, progress=False).metrics().scalars
    plain = score_checkpoint(tiny_bpe_checkpoint, run_dir / "eval.jsonl", spec, progress=False).metrics().scalars
    assert stored(rec) == pytest.approx(want, rel=1e-12, nan_ok=True)
    assert rec["scalars"]["eval_decision_nll"] != pytest.approx(plain["eval_decision_nll"], rel=1e-6)  # the adapter counts
    assert (tmp_path / "lora" / "tokcal" / "backfill" / "checkpoint-10.decisions.jsonl").is_file()
    assert not (ckpt / "tokcal_decisions.jsonl").exists()


def test_torchrun_two_processes_equal_one(run_dir: Path, tmp_path: Path):
    """`torchrun --nproc_per_node 2` on CPU (gloo): each rank scores half the batches,
    rank 0 gathers and logs; the numbers and files equal one process's."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    runs = tmp_path / "runs"
    one, two = LocalTracker(runs), LocalTracker(runs)
    common = [str(run_dir), "--data", str(run_dir / "eval.jsonl"), "--backend", "local", "--local-dir", str(runs),
              "--max-tokens", "200", "--quiet"]  # 200 tokens: one or two rows a batch, so both ranks work
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "tokcal.cli.main", "backfill",
         *common, "--run-id", two.run_id, "--output-dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("3 logged, 0 skipped, 0 failed") == 1  # rank 0 alone reports
    assert main(["backfill", *common, "--run-id", one.run_id, "--output-dir", str(tmp_path / "one")]) == 0
    a, b = read_local_store(one.directory), read_local_store(two.directory)
    assert [r["step"] for r in b] == STEPS
    assert [r["scalars"] for r in a] == [r["scalars"] for r in b]
    for s in STEPS:
        name = f"checkpoint-{s}.decisions.jsonl"
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_output_folder_with_a_final_model_stands_for_its_checkpoints(tmp_path: Path):
    from tokcal.jobs.checkpoints import resolve_checkpoints

    out = tmp_path / "out"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (out / "config.json").write_text("{}")  # the final model saved beside them
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert [s for _, s in resolve_checkpoints([out])] == [2, 4]
    assert [s for _, s in resolve_checkpoints([out / "checkpoint-4"])] == [4]


# ------------------------------------------------------------------- one eval set per series


def identity_of(scores) -> dict:
    from tokcal.core.identity import eval_set_identity

    return eval_set_identity(scores.sample_index, scores.gt, scores.labels)


def other_eval_set(run_dir: Path, path: Path) -> Path:
    """The same records with the first one's answer flipped: same size, another eval set."""
    from tests.helpers.training import write_records
    from tokcal.data.records import read_records

    records = read_records(run_dir / "eval.jsonl")
    text = json.dumps(records[0])
    flipped = text.replace("Accept}", "@@}").replace("Reject}", "Accept}").replace("@@}", "Reject}")
    assert flipped != text
    return write_records(path, [json.loads(flipped), *records[1:]])


def recorded_state(out: Path, tracker: LocalTracker, identity: dict | None) -> Path:
    from tokcal.jobs.state import record_eval_set, write_state

    state = write_state(out, [tracker.describe()], TrackingSettings(backend="local"))
    if identity is not None:
        record_eval_set(state, "eval_", identity)
    return state


def test_another_eval_set_under_the_same_prefix_is_refused_before_any_model_loads(run_dir: Path, expected,
                                                                                  tmp_path: Path, capsys):
    from tokcal.jobs.state import read_state, recorded_eval_set

    out = tmp_path / "out"
    out.mkdir()
    for s in STEPS:  # weights that cannot load: a model that loads fails its checkpoint (exit 1), visibly
        shutil.copytree(run_dir / f"checkpoint-{s}", out / f"checkpoint-{s}")
        (out / f"checkpoint-{s}").chmod(0o755)
        (out / f"checkpoint-{s}" / "model.safetensors").write_bytes(b"not loaded")
    tracker = LocalTracker(out / "tokcal")
    state = recorded_state(out, tracker, identity_of(expected[2]))
    other = other_eval_set(run_dir, tmp_path / "other.jsonl")

    assert cli(out, "--data", other) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokcal backfill: error: the eval set other.jsonl is not the one logged under 'eval_'")
    assert "--metric-prefix eval_other_" in err and "\n" not in err and str(state) in err, err
    assert read_local_store(tracker.directory) == [] and not (out / "tokcal" / "backfill").exists()
    # The same eval set gets past the check: then the weights are what fail, checkpoint by checkpoint.
    assert cli(out, "--data", run_dir / "eval.jsonl") == 1
    assert "could not load the model" in capsys.readouterr().out
    assert recorded_eval_set(read_state(state), "eval_") == identity_of(expected[2])  # unchanged


def test_each_eval_set_gets_its_own_prefix_and_record(run_dir: Path, expected, tmp_path: Path, capsys):
    from tokcal.jobs.state import read_state, recorded_eval_set

    out = linked(tmp_path, run_dir)
    tracker = LocalTracker(out / "tokcal")
    state = recorded_state(out, tracker, identity_of(expected[2]))
    other = other_eval_set(run_dir, tmp_path / "other.jsonl")
    assert cli(out, "--data", run_dir / "eval.jsonl") == 0  # the recorded eval set: logged
    assert "3 logged, 0 skipped, 0 failed" in capsys.readouterr().out

    # Every step in the run already: it says why nothing was logged.
    assert cli(out, "--data", run_dir / "eval.jsonl") == 0
    said = capsys.readouterr().out.splitlines()
    assert said[-2:] == [
        ("all 3 checkpoints' steps are in the run already under 'eval_'; use --force to rescore or "
         "--metric-prefix eval_other_ for another eval set"),
        f"backfill into local run {tracker.run_id}: 0 logged, 3 skipped, 0 failed"]

    # Another eval set under a prefix of its own: logged, and its identity recorded there.
    assert cli(out, "--data", other, "--metric-prefix", "eval_other_") == 0
    assert "3 logged, 0 skipped, 0 failed" in capsys.readouterr().out
    want = identity_of(score_checkpoint(run_dir / "checkpoint-2", other, DecisionSpec(), progress=False))
    assert want != identity_of(expected[2])
    recorded = read_state(state)
    assert recorded_eval_set(recorded, "eval_other_") == want
    assert recorded_eval_set(recorded, "eval_") == identity_of(expected[2])
    # ...and that record guards its series in turn.
    assert cli(out, "--data", run_dir / "eval.jsonl", "--metric-prefix", "eval_other_") == 2
    assert "is not the one logged under 'eval_other_'" in capsys.readouterr().err
    steps = [(r["step"], "eval_other_decision_samples" in r["scalars"]) for r in read_local_store(tracker.directory)]
    assert steps == [(2, False), (4, False), (6, False), (2, True), (4, True), (6, True)]


def test_steps_with_no_recorded_eval_set_are_not_vouched_for(run_dir: Path, tmp_path: Path, capsys, caplog):
    """A run whose tokcal.json records no eval set under the prefix (an older tokcal) but has
    steps there: a warning says it cannot be checked, and no identity is recorded for them."""
    from tokcal.jobs.state import read_state, recorded_eval_set

    out = linked(tmp_path, run_dir)
    tracker = LocalTracker(out / "tokcal")
    state = recorded_state(out, tracker, None)
    assert cli(out / "checkpoint-2", "--data", run_dir / "eval.jsonl", "--state", state) == 0
    assert recorded_eval_set(read_state(state), "eval_") is not None  # the first series under eval_: recorded
    state = recorded_state(out, tracker, None)  # as if written by a tokcal that records none
    with caplog.at_level("WARNING", logger="tokcal"):
        assert cli(out, "--data", run_dir / "eval.jsonl") == 0
    assert "no record of their eval set" in caplog.text and "--metric-prefix eval_other_" in caplog.text
    assert recorded_eval_set(read_state(state), "eval_") is None


def test_answers_without_any_decision_token_stop_before_any_model_loads(run_dir: Path, tmp_path: Path, capsys):
    tracker = LocalTracker(tmp_path / "runs")
    assert cli(run_dir, "--data", run_dir / "eval.jsonl", "--backend", "local", "--run-id", tracker.run_id,
               "--local-dir", tmp_path / "runs", "--labels", "Yes", "No", "--output-dir", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokcal backfill: error: no decision token found in the eval answers") and "\n" not in err
    assert "an answer reads '" in err and "--labels" in err
    assert read_local_store(tracker.directory) == [] and not (tmp_path / "o").exists()


def test_a_live_run_and_its_backfill_share_the_eval_sets_identity(tiny_bpe_checkpoint: Path, tmp_path: Path, capsys):
    """End to end: the training callback records its eval set in tokcal.json, backfill
    checks it. Needs the callback to record the identity (else: expected to fail)."""
    from tokcal import DecisionTrackingCallback
    from tokcal.jobs.state import find_state, read_state, recorded_eval_set

    out = tmp_path / "out"
    train_tiny(tiny_bpe_checkpoint, out, callbacks=[DecisionTrackingCallback(backend="local")], max_steps=4,
               eval_steps=2, n_train=16, n_eval=9)
    recorded = recorded_eval_set(read_state(find_state([out])), "eval_")
    if recorded is None:
        pytest.xfail("the training callback does not record its eval set's identity in tokcal.json on this branch")
    live = identity_of(score_checkpoint(out / "checkpoint-2", out / "eval.jsonl", DecisionSpec(), progress=False))
    assert recorded == live
    assert cli(out, "--data", out / "eval.jsonl") == 0
    assert "all 2 checkpoints' steps are in the run already under 'eval_'" in capsys.readouterr().out
    assert cli(out, "--data", other_eval_set(out, tmp_path / "other.jsonl")) == 2
    assert "--metric-prefix eval_other_" in capsys.readouterr().err


def test_quiet_prints_nothing_but_errors_and_the_result(run_dir: Path, tmp_path: Path):
    """The real CLI with --quiet: no progress bars (transformers' weight loading included),
    no library logs; backfill says its one-line result (and each failure), extract nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "TRANSFORMERS_", "HF_HUB_DISABLE"))}

    def tokcal(*argv: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tokcal", *map(str, argv)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=env)

    out = linked(tmp_path, run_dir, [2, 4])
    broken = out / "checkpoint-6"
    broken.mkdir()
    shutil.copy(run_dir / "checkpoint-6" / "config.json", broken)
    tracker = LocalTracker(tmp_path / "runs")
    proc = tokcal("backfill", out, "--data", run_dir / "eval.jsonl", "--backend", "local", "--run-id", tracker.run_id,
                  "--local-dir", tmp_path / "runs", "--quiet")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        (f"step        6  checkpoint-6             FAILED: {broken.resolve()} has no model weights (expected "
         "model.safetensors or an index)"),
        f"backfill into local run {tracker.run_id}: 2 logged, 0 skipped, 1 failed"]
    assert proc.stderr.splitlines() == [
        "tokcal backfill: 1 checkpoint(s) failed; fix them and run again (logged steps are skipped)"]
    assert [r["step"] for r in read_local_store(tracker.directory)] == [2, 4]

    decisions = tmp_path / "decisions.jsonl"
    proc = tokcal("extract", "--checkpoint", run_dir / "checkpoint-2", "--data", run_dir / "eval.jsonl", "--output",
                  decisions, "--metrics", tmp_path / "metrics.json", "--quiet")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert len(decisions.read_text().splitlines()) == 9
    # Without --quiet, the same command shows its bars and table (what --quiet takes away).
    proc = tokcal("extract", "--checkpoint", run_dir / "checkpoint-2", "--data", run_dir / "eval.jsonl", "--output",
                  decisions)
    assert proc.returncode == 0 and "Loading weights" in proc.stderr and "eval_decision_ece" in proc.stdout


def test_ctrl_c_then_again_goes_on_where_it_stopped(run_dir: Path, tmp_path: Path):
    """A real SIGINT once the first step is in the run: exit 130, what was logged stays (with
    its per-decision file and the eval set's record), nothing half-written; the next call
    logs the rest, each step once."""
    import signal

    from tests.helpers.training import write_records
    from tokcal.data.records import read_records
    from tokcal.jobs.state import read_state, recorded_eval_set

    out = linked(tmp_path, run_dir)
    tracker = LocalTracker(out / "tokcal")
    state = recorded_state(out, tracker, None)
    data = write_records(tmp_path / "big.jsonl", read_records(run_dir / "eval.jsonl") * 150)  # seconds a checkpoint
    argv = [sys.executable, "-m", "tokcal", "backfill", str(out), "--data", str(data), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    store = tracker.directory / "evaluations.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (store.is_file() and store.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "tokcal backfill: interrupted"
    first = sorted(r["step"] for r in read_local_store(tracker.directory))
    assert first and first == STEPS[: len(first)] and len(first) < len(STEPS)
    files = out / "tokcal" / "backfill"
    assert sorted(p.name for p in files.iterdir()) == [f"checkpoint-{s}.decisions.jsonl" for s in first]
    assert recorded_eval_set(read_state(state), "eval_") is not None
    assert not list(tmp_path.rglob("*.tmp"))

    again = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == (f"backfill into local run {tracker.run_id}: {len(STEPS) - len(first)} logged, "
                                    f"{len(first)} skipped, 0 failed")
    assert sorted(r["step"] for r in read_local_store(tracker.directory)) == STEPS
    assert sorted(p.name for p in files.iterdir()) == [f"checkpoint-{s}.decisions.jsonl" for s in STEPS]
