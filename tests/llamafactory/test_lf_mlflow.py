"""A real LLaMA-Factory run through ``tokcal train`` with ``report_to: mlflow`` (a real MLflow
server), then ``tokcal backfill --llamafactory-config`` into a fresh run: the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.llamafactory.conftest import (
    CONFIG,
    close,
    needs_llamafactory,
    tiny_overrides,
)
from tests.llamafactory.test_lf_local import STEPS
from tokcal.jobs.state import read_state

pytestmark = [needs_llamafactory, pytest.mark.slow]
EXPERIMENT = "tokcal-lf"


@pytest.fixture(scope="module")
def client(mlflow_server: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def run(lf_train, mlflow_server: str) -> Path:
    return lf_train("mlflow", "report_to=mlflow", MLFLOW_TRACKING_URI=mlflow_server,
                    MLFLOW_EXPERIMENT_NAME=EXPERIMENT)


def history(client, run_id: str) -> dict[str, dict[int, float]]:
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith("eval_decision_") or key.startswith("eval_avg_p_"):
            out[key] = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return out


@pytest.fixture(scope="module")
def runs(client, run: Path):

    exp = client.get_experiment_by_name(EXPERIMENT)
    all_runs = client.search_runs([exp.experiment_id])
    state = read_state(run / "tokcal.json")
    (tracker,) = state["trackers"]
    assert tracker["backend"] == "mlflow"
    return tracker["run_id"], all_runs


def flip_keys(hist: dict) -> set[str]:
    return {k for k in hist if k.endswith(("_flips_to_wrong", "_flips_to_right", "_forgotten"))}


def test_metrics_at_every_eval_step_in_the_training_run(client, runs) -> None:
    run_id, all_runs = runs
    hist = history(client, run_id)
    assert "eval_decision_ece" in hist and "eval_decision_prob_mass" in hist
    for key, by_step in hist.items():
        # The flips since the previous evaluation start at the second evaluation.
        assert sorted(by_step) == (STEPS[1:] if key in flip_keys(hist) else STEPS), key
    # tokcal wrote into the Trainer's own run: its loss curve is there too.
    train_run = client.get_run(run_id)
    assert "loss" in train_run.data.metrics and "eval_loss" in train_run.data.metrics


def test_final_evaluation_run_has_no_decision_metrics(client, runs) -> None:
    # LLaMA-Factory's do_eval after training: transformers' MLflow integration ended the
    # training run at train end and opens a second run for that eval_loss. tokcal keeps its
    # run id, and that evaluation repeats step 8, so nothing of ours goes there.
    run_id, all_runs = runs
    others = [r for r in all_runs if r.info.run_id != run_id]
    assert len(others) == 1
    assert "eval_loss" in others[0].data.metrics
    assert not [k for k in others[0].data.metrics if "decision" in k]


def test_backfill_into_a_new_run_equals_the_callback(client, runs, run: Path, lf_tiny: Path, mlflow_server: str,
                                                     tmp_path: Path, capsys) -> None:
    from tokcal.cli.main import main

    run_id, _ = runs
    exp = client.get_experiment_by_name(EXPERIMENT)
    fresh = client.create_run(exp.experiment_id, run_name="backfill").info.run_id
    args = ["backfill", str(run / "checkpoint-*"), "--llamafactory-config", str(CONFIG), "--backend", "mlflow",
            "--tracking-uri", mlflow_server, "--run-id", fresh, "--output-dir", str(tmp_path), "--quiet"]
    for item in tiny_overrides(lf_tiny, run):
        args += ["--llamafactory-set", item]
    assert main(args) == 0
    assert "2 logged, 0 skipped, 0 failed" in capsys.readouterr().out
    want, got = history(client, run_id), history(client, fresh)
    # Backfill counts the flips between the checkpoints it scores, as the callback did between
    # its evaluations (at step 8 only: nothing comes before step 4); their values are checked below.
    assert len(flip_keys(want)) == 3 and flip_keys(got) == flip_keys(want)
    assert all(set(got[k]) == {8} for k in flip_keys(got))
    assert set(got) == set(want)
    bad = {(k, s): (got[k].get(s), v) for k in want for s, v in want[k].items() if not close(got[k].get(s), v)}
    assert not bad
    # The training run already has those steps: backfilling into it adds nothing.
    args = ["backfill", str(run / "checkpoint-*"), "--llamafactory-config", str(CONFIG),
            "--tracking-uri", mlflow_server, "--output-dir", str(tmp_path), "--quiet"]
    for item in tiny_overrides(lf_tiny, run):
        args += ["--llamafactory-set", item]
    assert main(args) == 0
    assert "0 logged, 2 skipped, 0 failed" in capsys.readouterr().out
