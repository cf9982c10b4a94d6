"""The callback with the Trainer's own W&B and MLflow integrations (report_to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokcal import DecisionTrackingCallback
from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.tokenizers import small_bpe_tokenizer
from tests.helpers.training import train_tiny
from tokcal.core.spec import DecisionSpec
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.state import read_state


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", small_bpe_tokenizer(), seed=0)


def test_report_to_mlflow_logs_into_the_trainers_run(base_ckpt, tmp_path, mlflow_server, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "callback-test")
    out = tmp_path / "out"
    train_tiny(base_ckpt, out, callbacks=[DecisionTrackingCallback()], report_to="mlflow")
    state = read_state(out / "tokcal.json")
    (tracker,) = state["trackers"]
    assert tracker["backend"] == "mlflow"
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker["run_id"])
    # The Trainer's own metrics and ours are in the same run.
    assert "eval_loss" in run.data.metrics
    hist = client.get_metric_history(run.info.run_id, "eval_decision_ece")
    assert sorted(m.step for m in hist) == [4, 8, 12]
    mass = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_decision_prob_mass")}
    own = score_checkpoint(out / "checkpoint-8", out / "eval.jsonl", DecisionSpec(), progress=False)
    assert mass[8] == pytest.approx(own.metrics().scalars["eval_decision_prob_mass"], abs=1e-5)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "tokcal/eval")}
    assert any("bins_step_000012" in p for p in arts), arts
    assert mlflow.active_run() is None


def test_report_to_wandb_offline_rows_carry_global_step(base_ckpt, tmp_path, monkeypatch, wandb_offline):
    wandb = pytest.importorskip("wandb")
    from tests.helpers.wandb_reader import find_run_file, history_rows

    monkeypatch.setenv("WANDB_PROJECT", "tokcal-test")
    out = tmp_path / "out"
    try:
        train_tiny(base_ckpt, out, callbacks=[DecisionTrackingCallback()], report_to="wandb")
    finally:
        if wandb.run is not None:
            wandb.run.finish()
    rows = history_rows(find_run_file(wandb_offline))
    ours = [r for r in rows if "eval/decision_ece" in r]
    assert [r["train/global_step"] for r in ours] == [4, 8, 12]
    # Same run as the Trainer's own eval/loss rows.
    assert any("eval/loss" in r for r in rows)
    last = ours[-1]
    assert last["eval/decision_hist_confidence"]["_type"] == "histogram"
    assert any(isinstance(v, dict) and v.get("_type") == "image-file" for v in last.values())
    assert any(isinstance(v, dict) and v.get("_type") == "table-file" for v in last.values())
