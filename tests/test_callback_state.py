"""The callback's state is keyed by what it belongs to: the eval set (prefix and identity),
the Trainer's run (output folder), a resumed run; and it says where its numbers go.

Every test is a real Trainer run of the tiny model; numbers are checked against an own
forward over the saved checkpoint (``score_checkpoint``) or a brute-force loop.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.training import as_dataset, write_records
from tokcal import DecisionTrackingCallback
from tokcal.core.identity import eval_set_identity
from tokcal.core.spec import DecisionSpec
from tokcal.data.synthetic import review_records
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.state import read_state, recorded_eval_set
from tokcal.trackers.local import read_local_store

LABELS = ["Accept", "Reject"]


def make_trainer(ckpt: Path, out: Path, callbacks: list[Any], *, eval_sets: dict[str, list[dict]] | None = None,
                 n_eval: int = 13, compute_metrics: Any = None, **args: Any) -> Any:
    """A Trainer of the tiny checkpoint like tests.helpers.training.train_tiny's, not yet
    trained: ``eval_sets`` (name -> records) gives a dict eval dataset, else one set of
    ``n_eval`` records (written to ``out/eval.jsonl``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    out.mkdir(parents=True, exist_ok=True)
    if eval_sets is None:
        recs = review_records(n_eval, seed=100)
        write_records(out / "eval.jsonl", recs)
        eval_dataset: Any = as_dataset(recs, tok)
    else:
        eval_dataset = {name: as_dataset(recs, tok) for name, recs in eval_sets.items()}
    settings: dict[str, Any] = dict(
        output_dir=str(out), max_steps=12, per_device_train_batch_size=8, per_device_eval_batch_size=4,
        learning_rate=3e-3, warmup_steps=0, eval_strategy="steps", eval_steps=4, save_strategy="steps",
        save_steps=4, logging_steps=4, report_to="none", use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    settings.update(args)
    return Trainer(model=AutoModelForCausalLM.from_pretrained(str(ckpt)), args=TrainingArguments(**settings),
                   train_dataset=as_dataset(review_records(48, seed=0), tok), eval_dataset=eval_dataset,
                   data_collator=DataCollatorForSeq2Seq(tok, padding=True), processing_class=tok,
                   callbacks=callbacks, compute_metrics=compute_metrics)


def local_records(out: Path) -> list[dict]:
    state = read_state(out / "tokcal.json")
    (entry,) = [t for t in state["trackers"] if t["backend"] == "local"]
    return read_local_store(entry["local_dir"])


def steps_of(records: list[dict], prefix: str) -> list[int]:
    return [r["step"] for r in records if r["prefix"] == prefix]


def gt_of(records: list[dict]) -> np.ndarray:
    """The true label of each record, read off its answer text (independent of tokcal)."""
    return np.array([0 if "{Accept}" in r["messages"][-1]["content"] else 1 for r in records])


def per_sample_correct(run_dir: Path, record: dict) -> dict[int, bool]:
    """sample index -> whether the argmax label is the true one, from a stored per-sample record."""
    from tokcal.core.per_sample import PerSample

    ps = PerSample.from_json((run_dir / record["per_sample_file"]).read_bytes())
    return {int(i): bool(np.argmax(p) == g) for i, p, g in zip(ps.index, ps.probs, ps.gt)}


# ------------------------------------------------------------------------ eval sets


@pytest.mark.slow
def test_every_counts_per_eval_set(tiny_bpe_checkpoint, tmp_path):
    """every=2 with two eval sets: each set is logged at its 1st and 3rd evaluation."""
    a, b = review_records(9, seed=200), review_records(7, seed=300)
    out = tmp_path / "out"
    trainer = make_trainer(tiny_bpe_checkpoint, out, [DecisionTrackingCallback(every=2, verbose=False)],
                           eval_sets={"a": a, "b": b})
    trainer.train()
    records = local_records(out)
    assert steps_of(records, "eval_a_") == [4, 12]
    assert steps_of(records, "eval_b_") == [4, 12]
    last_b = [r for r in records if r["prefix"] == "eval_b_"][-1]["scalars"]
    assert last_b["eval_b_decision_samples"] == 7
    # Set b's numbers at step 12 equal an own forward over checkpoint-12 on set b's records.
    write_records(tmp_path / "b.jsonl", b)
    own = score_checkpoint(out / "checkpoint-12", tmp_path / "b.jsonl", DecisionSpec(), progress=False)
    own_scalars = own.metrics(prefix="eval_b_").scalars
    for key in ("eval_b_decision_accuracy", "eval_b_decision_prob_mass", "eval_b_decision_ece"):
        assert last_b[key] == pytest.approx(own_scalars[key], abs=1e-5)


@pytest.mark.slow
def test_the_prefix_is_the_one_the_trainer_evaluated_under(tiny_bpe_checkpoint, tmp_path):
    """A compute_metrics key ending in _runtime renames nothing, metric_for_best_model on a
    tokcal key works, and evaluate(metric_key_prefix=...) gives that prefix."""
    out = tmp_path / "out"
    cb = DecisionTrackingCallback(verbose=False)
    trainer = make_trainer(tiny_bpe_checkpoint, out, [cb],
                           compute_metrics=lambda pred: {"generate_runtime": 1.5},
                           metric_for_best_model="eval_decision_accuracy", greater_is_better=True,
                           load_best_model_at_end=True, max_steps=8)
    trainer.train()  # raised KeyError when the prefix was guessed as eval_generate_
    keys = {k for h in trainer.state.log_history for k in h}
    assert "eval_decision_accuracy" in keys and "eval_generate_runtime" in keys
    assert not any(k.startswith("eval_generate_decision") for k in keys)
    assert trainer.state.best_metric is not None
    holdout = trainer.evaluate(metric_key_prefix="holdout")
    assert "holdout_decision_accuracy" in holdout and "holdout_decision_samples" in holdout
    cb.flush()
    assert steps_of(local_records(out), "holdout_") == [8]


@pytest.mark.slow
def test_flips_are_counted_within_one_eval_set_only(tiny_bpe_checkpoint, tmp_path):
    """evaluate(eval_dataset=other) under the default prefix starts its own flip history,
    says so once, and leaves the recorded identity (tokcal.json) on the training eval set."""
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    cb = DecisionTrackingCallback(verbose=False)
    trainer = make_trainer(tiny_bpe_checkpoint, out, [cb])
    trainer.train()
    trained = review_records(13, seed=100)
    expected = eval_set_identity(np.arange(13), gt_of(trained), LABELS)
    cb.flush()
    assert recorded_eval_set(read_state(out / "tokcal.json"), "eval_") == expected

    tok = AutoTokenizer.from_pretrained(str(tiny_bpe_checkpoint))
    other = review_records(13, seed=777)  # the same size, other samples
    with pytest.warns(UserWarning, match=r"not the one logged under it before") as rec:
        other_metrics = trainer.evaluate(eval_dataset=as_dataset(other, tok))
    assert sum("not the one logged" in str(w.message) for w in rec) == 1
    assert "eval_decision_accuracy" in other_metrics
    assert not any("flips" in k or "forgotten" in k for k in other_metrics)  # its first evaluation

    # The training eval set again, same weights as at step 12: compared with step 12, no flips.
    again = trainer.evaluate()
    cb.flush()
    assert again["eval_decision_flips_to_right"] == 0 and again["eval_decision_flips_to_wrong"] == 0
    assert recorded_eval_set(read_state(out / "tokcal.json"), "eval_") == expected
    records = [r for r in local_records(out) if r["prefix"] == "eval_"]
    assert [r["step"] for r in records] == [4, 8, 12]  # the later evaluations at step 12: one point per step
    # What counting across the two sets would have said (the old behaviour): flips between
    # unrelated samples. Step 12's record against an own forward of checkpoint-12 on the other set.
    run_dir = Path(read_state(out / "tokcal.json")["trackers"][0]["local_dir"])
    write_records(tmp_path / "other.jsonl", other)
    own = score_checkpoint(out / "checkpoint-12", tmp_path / "other.jsonl", DecisionSpec(), progress=False)
    assert other_metrics["eval_decision_accuracy"] == pytest.approx(own.metrics().scalars["eval_decision_accuracy"])
    unrelated = {int(i): bool(np.argmax(p) == g) for i, p, g in zip(own.sample_index, own.probs, own.gt)}
    assert sum(_brute_flips(per_sample_correct(run_dir, records[2]), unrelated)) > 0


@pytest.mark.slow
def test_one_callback_two_trainers_two_runs(tiny_bpe_checkpoint, tmp_path):
    """A sweep: the same callback given to two Trainers; each gets its own run and tokcal.json,
    and a second train() into the same folder gets a new run too."""
    cb = DecisionTrackingCallback(verbose=False)
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in outs:
        make_trainer(tiny_bpe_checkpoint, out, [cb], max_steps=8).train()
    cb.flush()
    ids = [read_state(out / "tokcal.json")["trackers"][0]["run_id"] for out in outs]
    assert ids[0] != ids[1]
    for out in outs:
        assert steps_of(local_records(out), "eval_") == [4, 8]
    make_trainer(tiny_bpe_checkpoint, outs[0], [cb], max_steps=4).train()
    cb.close()
    third = read_state(outs[0] / "tokcal.json")["trackers"][0]["run_id"]
    assert third not in ids
    assert steps_of(local_records(outs[0]), "eval_") == [4]


def test_an_eval_set_without_supervised_tokens_warns_once(tiny_bpe_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bpe_checkpoint))
    out = tmp_path / "out"
    cb = DecisionTrackingCallback(verbose=False)
    trainer = make_trainer(tiny_bpe_checkpoint, out, [cb])
    masked = [{**row, "labels": [-100] * len(row["labels"])} for row in as_dataset(review_records(6, seed=5), tok)]
    with pytest.warns(UserWarning, match=r"'eval' eval set has no supervised tokens \(every label is -100\)") as rec:
        trainer.evaluate(eval_dataset=masked)
        trainer.evaluate(eval_dataset=masked)
    assert sum("no supervised tokens" in str(w.message) for w in rec) == 1
    cb.close()
    assert not (out / "tokcal.json").exists() or local_records(out) == []


# ------------------------------------------------------------------------ backends


@pytest.mark.slow
def test_disabled_wandb_logs_to_the_local_store(tiny_bpe_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    cb = DecisionTrackingCallback(verbose=False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        make_trainer(tiny_bpe_checkpoint, out, [cb], report_to="wandb", max_steps=8).train()
        cb.close()
    said = [str(w.message) for w in rec if "WANDB_MODE=disabled" in str(w.message)]
    assert len(said) == 1 and "local store" in said[0], said
    state = read_state(out / "tokcal.json")
    assert [t["backend"] for t in state["trackers"]] == ["local"]
    assert steps_of(local_records(out), "eval_") == [4, 8]


# ------------------------------------------------------------------------ resume


def _resume_case(ckpt: Path, out: Path, **backend: Any) -> dict[str, Any]:
    """Train to step 8; resume from checkpoint-8 to step 12 (a new process would make a new
    callback); then resume from checkpoint-8 again (as after a crash past step 12)."""
    make_trainer(ckpt, out, [DecisionTrackingCallback(verbose=False, **backend)], max_steps=8).train()
    first = read_state(out / "tokcal.json")
    cb = DecisionTrackingCallback(verbose=False, **backend)
    resumed = make_trainer(ckpt, out, [cb], max_steps=12)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    cb.close()
    second = read_state(out / "tokcal.json")
    cb = DecisionTrackingCallback(verbose=False, **backend)
    with pytest.warns(UserWarning, match=r"already has the 'eval_' evaluation at step 12; not logged again"):
        make_trainer(ckpt, out, [cb], max_steps=12).train(resume_from_checkpoint=str(out / "checkpoint-8"))
        cb.close()
    return {"first": first, "second": second, "third": read_state(out / "tokcal.json"),
            "history": resumed.state.log_history}


def _brute_flips(before: dict[int, bool], after: dict[int, bool]) -> tuple[int, int]:
    to_right = sum(1 for i in after if i in before and not before[i] and after[i])
    to_wrong = sum(1 for i in after if i in before and before[i] and not after[i])
    return to_right, to_wrong


@pytest.mark.slow
def test_resume_continues_the_local_run(tiny_bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    states = _resume_case(tiny_bpe_checkpoint, out)
    run_ids = {s["trackers"][0]["run_id"] for s in (states["first"], states["second"], states["third"])}
    assert len(run_ids) == 1  # one run all along
    assert recorded_eval_set(states["third"], "eval_") == recorded_eval_set(states["first"], "eval_") is not None
    records = local_records(out)
    assert steps_of(records, "eval_") == [4, 8, 12]  # no step twice
    run_dir = Path(states["third"]["trackers"][0]["local_dir"])
    by_step = {r["step"]: r for r in records}
    to_right, to_wrong = _brute_flips(per_sample_correct(run_dir, by_step[8]), per_sample_correct(run_dir, by_step[12]))
    s12 = by_step[12]["scalars"]
    assert (s12["eval_decision_flips_to_right"], s12["eval_decision_flips_to_wrong"]) == (to_right, to_wrong)


@pytest.mark.slow
def test_resume_continues_the_mlflow_run(tiny_bpe_checkpoint, tmp_path, mlflow_server, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("TOKCAL_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"resume-{tmp_path.name}")
    out = tmp_path / "out"
    states = _resume_case(tiny_bpe_checkpoint, out, backend="mlflow", tracking_uri=mlflow_server)
    run_ids = {s["trackers"][0]["run_id"] for s in (states["first"], states["second"], states["third"])}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    hist = client.get_metric_history(run_id, "eval_decision_samples")
    assert sorted(m.step for m in hist) == [4, 8, 12]  # one point per step
    from tokcal.trackers.mlflow import read_mlflow

    (series,) = read_mlflow(run_id, mlflow_server)
    by_step = {p.step: p for p in series.points}
    before = {int(i): bool(c) for i, c in zip(by_step[8].per_sample.index, by_step[8].per_sample.correct)}
    after = {int(i): bool(c) for i, c in zip(by_step[12].per_sample.index, by_step[12].per_sample.correct)}
    to_right, to_wrong = _brute_flips(before, after)
    assert by_step[12].scalar("decision_flips_to_right") == to_right
    assert by_step[12].scalar("decision_flips_to_wrong") == to_wrong


# ------------------------------------------------------------------------ console lines


@pytest.mark.slow
def test_the_callback_says_where_its_numbers_go(tiny_bpe_checkpoint, tmp_path, capfd):
    out = tmp_path / "out"
    make_trainer(tiny_bpe_checkpoint, out, [DecisionTrackingCallback()], max_steps=8).train()
    shown = capfd.readouterr().out
    state = read_state(out / "tokcal.json")
    run_id, folder = state["trackers"][0]["run_id"], state["trackers"][0]["local_dir"]
    begin = [line for line in shown.splitlines() if line.startswith("tokcal: decision metrics go to")]
    assert begin == [f"tokcal: decision metrics go to local run {run_id}, folder {folder} "
                     f"(report: tokcal report {folder})"]
    lines = [line for line in shown.splitlines() if line.startswith("tokcal eval step")]
    records = local_records(out)
    assert len(lines) == len(records) == 2
    for line, r in zip(lines, records):
        s = r["scalars"]
        assert line == (f"tokcal eval step {r['step']}: mass {s['eval_decision_prob_mass']:.3f}, accuracy "
                        f"{s['eval_decision_accuracy']:.3f}, ECE {s['eval_decision_ece']:.3f} (13 decisions)")

    quiet = tmp_path / "quiet"
    make_trainer(tiny_bpe_checkpoint, quiet, [DecisionTrackingCallback(verbose=False)], max_steps=4).train()
    assert "tokcal" not in capfd.readouterr().out


@pytest.mark.slow
def test_the_mlflow_line_has_the_ui_command_and_no_password(tiny_bpe_checkpoint, tmp_path, capfd, monkeypatch,
                                                            mlflow_server):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("TOKCAL_LOCK_DIR", str(tmp_path / "locks"))
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    out = tmp_path / "out"
    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=f"sqlite:///{db}")
    make_trainer(tiny_bpe_checkpoint, out, [cb], max_steps=4).train()
    cb.close()
    run_id = read_state(out / "tokcal.json")["trackers"][0]["run_id"]
    shown = capfd.readouterr().out
    assert f"tokcal: decision metrics go to mlflow run {run_id}, open with: mlflow ui --backend-store-uri " \
           f"sqlite:///{db}" in shown

    secret_uri = re.sub(r"^http://", "http://alice:s3cretpw@", mlflow_server)
    out2 = tmp_path / "out2"
    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=secret_uri)
    make_trainer(tiny_bpe_checkpoint, out2, [cb], max_steps=4).train()
    cb.close()
    shown = capfd.readouterr()
    run_id = read_state(out2 / "tokcal.json")["trackers"][0]["run_id"]
    assert f"tokcal: decision metrics go to mlflow run {run_id}, http://alice:***@" in shown.out
    assert "s3cretpw" not in shown.out + shown.err


# ------------------------------------------------------------------------ one writer per step


@pytest.mark.slow
def test_live_training_and_a_backfill_loop_make_one_point_per_step(tiny_bpe_checkpoint, tmp_path, mlflow_server,
                                                                   monkeypatch):
    """A real training logs into an MLflow run while `tokcal backfill` processes run again
    and again over its checkpoints into the same run. Live logging is slowed by a real
    delay before each MLflow write (as a server under load would), so backfill gets to
    steps the training has not written yet. Every metric has one point per step."""
    import os
    import subprocess
    import sys
    import threading
    import time

    mlflow = pytest.importorskip("mlflow")
    from tokcal.trackers.mlflow import MlflowTracker

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("TOKCAL_LOCK_DIR", str(tmp_path / "locks"))  # the lock both sides take
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    slow_write = MlflowTracker._write_evaluation

    def lagging(self, *args, **kwargs):  # the training process only; the subprocesses write at full speed
        time.sleep(6.0)
        return slow_write(self, *args, **kwargs)

    monkeypatch.setattr(MlflowTracker, "_write_evaluation", lagging)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"one-writer-{tmp_path.name}")
    out = tmp_path / "out"
    done = threading.Event()
    runs: list[int] = []
    summaries: list[list[str]] = []

    def backfill_loop() -> None:
        while not (out / "tokcal.json").exists() and not done.is_set():
            time.sleep(0.2)
        while not done.is_set():
            proc = subprocess.run([sys.executable, "-m", "tokcal.cli.main", "backfill", str(out), "--data",
                                   str(out / "eval.jsonl"), "--quiet", "--output-dir", str(tmp_path / "decisions")],
                                  env=env, capture_output=True, text=True, timeout=600)
            runs.append(proc.returncode)
            summaries.append(proc.stdout.strip().splitlines()[-1:] + proc.stderr.strip().splitlines()[-2:])

    loop = threading.Thread(target=backfill_loop)
    loop.start()
    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=mlflow_server, verbose=False)
    try:
        make_trainer(tiny_bpe_checkpoint, out, [cb], max_steps=16, eval_steps=2, save_steps=2, logging_steps=2).train()
        cb.close()
    finally:
        done.set()
        loop.join()
    run_id = read_state(out / "tokcal.json")["trackers"][0]["run_id"]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert runs, "no backfill ran beside the training"
    for key in ("eval_decision_samples", "eval_decision_accuracy", "eval_decision_ece", "eval_avg_p_accept"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(2, 17, 2)), (key, steps, runs)
    from tokcal.trackers.mlflow import read_mlflow

    (series,) = read_mlflow(run_id, mlflow_server)
    backfilled = [p.step for p in series.points if p.backfilled]
    print(f"backfill runs: {runs}; backfilled steps: {backfilled}; {summaries}")
    assert backfilled, f"backfill wrote no step, so the two writers never met: {summaries}"


@pytest.mark.slow
def test_the_wandb_line_says_how_to_upload_an_offline_run(tiny_bpe_checkpoint, tmp_path, capfd, wandb_offline,
                                                          monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_PROJECT", "tokcal-test")
    cb = DecisionTrackingCallback()
    try:
        make_trainer(tiny_bpe_checkpoint, tmp_path / "out", [cb], report_to="wandb", max_steps=4).train()
        cb.close()
    finally:
        if wandb.run is not None:
            wandb.run.finish()
    shown = capfd.readouterr().out
    found = re.search(r"tokcal: decision metrics go to wandb run (\S+), offline; upload with: wandb sync (\S+)", shown)
    assert found, shown
    run_id, folder = found.groups()
    assert Path(folder).is_dir() and Path(folder).name.endswith(run_id) and Path(folder).name.startswith("offline-run")
    assert re.search(r"^tokcal eval step 4: mass \d\.\d{3}, accuracy \d\.\d{3}, ECE \d\.\d{3} \(13 decisions\)$",
                     shown, re.MULTILINE)
