"""DecisionTrackingCallback on a real (tiny) Qwen2.5-VL Trainer run with page images.

The eval batches carry every processor output (``pixel_values``, ``image_grid_thw``,
``mm_token_type_ids``); the collator labels the answers without tokcal. Checked: the live
numbers at every eval step equal ``tokcal extract`` on the saved checkpoints (which rebuilds
the inputs from the data file with the checkpoint's processor), ``eval_loss`` equals a run
without the callback, the own-pass scorer equals the hook, and a backfill of both
checkpoints into the same run (local store and MLflow) equals the live numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokcal import DecisionTrackingCallback
from tests.helpers.tokenizers import qwen25_tokenizer
from tests.helpers.vision import (
    VLCollator,
    absolute,
    make_tiny_vl_checkpoint,
    page_records,
)
from tokcal.core.spec import DecisionSpec
from tokcal.data.sources import ImageDataFile
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.state import read_state
from tokcal.trackers.local import read_local_store

pytestmark = pytest.mark.slow  # trains a (tiny) vision-language model

KEYS = ["eval_avg_p_accept", "eval_avg_p_reject", "eval_decision_prob_mass", "eval_decision_confidence",
        "eval_decision_accuracy", "eval_decision_ece", "eval_decision_brier", "eval_decision_nll"]
STEPS = [2, 4]
N_EVAL = 7


@pytest.fixture(scope="module")
def vl_base(tmp_path_factory) -> Path:
    return make_tiny_vl_checkpoint(tmp_path_factory.mktemp("vl-base") / "ckpt", qwen25_tokenizer(), seed=0)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    """train.jsonl and eval.jsonl (paths relative to this folder) with their page images."""
    d = tmp_path_factory.mktemp("vl-pages")
    for name, n, seed in (("train", 12, 1), ("eval", N_EVAL, 100)):
        recs = page_records(n, d / name, seed=seed)
        (d / name / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def train_vl(base: Path, pages: Path, out: Path, *, callbacks=(), report_to="none", max_steps: int = 4):
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Trainer,
        TrainingArguments,
    )

    from tokcal.jobs.checkpoints import load_processor

    def rows(name: str) -> list[dict]:
        recs = [json.loads(x) for x in (pages / name / f"{name}.jsonl").read_text().splitlines()]
        return absolute(recs, pages / name)

    processor = load_processor(base)
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, per_device_eval_batch_size=3,
        learning_rate=3e-3, warmup_steps=0, eval_strategy="steps", eval_steps=2, save_strategy="steps",
        save_steps=2, logging_steps=2, report_to=report_to, use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=Qwen2_5_VLForConditionalGeneration.from_pretrained(str(base)), args=args,
                      train_dataset=rows("train"), eval_dataset=rows("eval"), data_collator=VLCollator(processor),
                      processing_class=processor, callbacks=list(callbacks))
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def runs(vl_base, pages, tmp_path_factory, mlflow_server):
    """The same training with the callback (local store and the Trainer's MLflow run) and
    without it."""
    import os

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    os.environ.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="vl-callback")
    try:
        out_with = tmp_path_factory.mktemp("vl-with") / "out"
        t_with = train_vl(vl_base, pages, out_with, report_to="mlflow",
                          callbacks=[DecisionTrackingCallback(backend=["local", "mlflow"])])
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    out_without = tmp_path_factory.mktemp("vl-without") / "out"
    t_without = train_vl(vl_base, pages, out_without)
    return t_with, t_without, out_with


def trackers(out: Path) -> dict[str, dict]:
    return {t["backend"]: t for t in read_state(out / "tokcal.json")["trackers"]}


def live(out: Path) -> dict[int, dict]:
    return {r["step"]: r["scalars"] for r in read_local_store(trackers(out)["local"]["local_dir"])
            if not r.get("tags")}


def test_live_numbers_equal_extract_on_the_checkpoints(runs, pages):
    _, _, out = runs
    logged = live(out)
    assert sorted(logged) == STEPS
    for step in STEPS:
        assert logged[step]["eval_decision_samples"] == N_EVAL and logged[step]["eval_decision_missing"] == 0
        source = ImageDataFile(pages / "eval" / "eval.jsonl")
        own = score_checkpoint(out / f"checkpoint-{step}", source, DecisionSpec(), progress=False).metrics().scalars
        for k in KEYS:
            assert logged[step][k] == pytest.approx(own[k], abs=1e-5), (step, k)


def test_eval_loss_is_untouched(runs):
    t_with, t_without, _ = runs
    a = {h["step"]: h["eval_loss"] for h in t_with.state.log_history if "eval_loss" in h}
    b = {h["step"]: h["eval_loss"] for h in t_without.state.log_history if "eval_loss" in h}
    assert a.keys() == b.keys() == set(STEPS)
    assert a == b


def test_own_pass_takes_every_batch_key_and_answer_logits_only(runs, pages, tmp_path):
    """scorer='pass' on the last checkpoint: the same numbers as the hook, the model asked for
    one logits row per decision, and the vision inputs reached it."""
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Trainer,
        TrainingArguments,
    )

    t_with, _, out = runs
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(out / "checkpoint-4"))
    rows, seen = [], []
    model.lm_head.register_forward_hook(lambda m, a, o: rows.append(tuple(o.shape)))
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    cb = DecisionTrackingCallback(scorer="pass", backend="local", local_dir=str(tmp_path / "store"))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                          per_device_eval_batch_size=3, disable_tqdm=True,
                                                          remove_unused_columns=False),
                      eval_dataset=t_with.eval_dataset, data_collator=t_with.data_collator,
                      processing_class=t_with.processing_class, callbacks=[cb])
    rows.clear()
    trainer.evaluate()
    cb.flush()
    own = read_local_store(next((tmp_path / "store").iterdir()))[0]["scalars"]
    for k in KEYS:
        assert own[k] == pytest.approx(live(out)[4][k], abs=1e-5), k
    n_batches = -(-N_EVAL // 3)
    pass_rows = [r for r in rows if len(r) == 2]  # the own pass: (decisions, vocab)
    assert sum(r[0] for r in pass_rows) == N_EVAL and len(pass_rows) == n_batches
    assert all({"pixel_values", "image_grid_thw", "mm_token_type_ids"} <= s for s in seen)


def test_backfill_into_the_same_runs_equals_live(runs, pages, mlflow_server, capsys):
    from mlflow.tracking import MlflowClient

    from tokcal.cli.main import main

    _, _, out = runs
    eval_file = pages / "eval" / "eval.jsonl"
    rc = main(["backfill", str(out / "checkpoint-*"), "--data", str(eval_file), "--force", "--quiet",
               "--tracking-uri", mlflow_server])
    assert rc == 0, capsys.readouterr().err
    assert "2 logged, 0 skipped, 0 failed" in capsys.readouterr().out
    ts = trackers(out)
    local = read_local_store(ts["local"]["local_dir"])
    back = {r["step"]: r["scalars"] for r in local if r.get("tags", {}).get("tokcal_backfill") == "true"}
    logged = live(out)
    assert sorted(back) == STEPS
    client = MlflowClient(mlflow_server)
    for step in STEPS:
        for k in KEYS:
            assert back[step][k] == pytest.approx(logged[step][k], abs=1e-5), (step, k)
    for k in KEYS:
        hist = client.get_metric_history(ts["mlflow"]["run_id"], k)
        assert sorted(m.step for m in hist) == [2, 2, 4, 4], k  # live, then backfilled
        for m in hist:
            assert m.value == pytest.approx(logged[m.step][k], abs=1e-5), (k, m.step)
