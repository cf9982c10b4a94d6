"""The W&B backend in offline mode, read back from the run's ``.wandb`` file."""

from __future__ import annotations

import json

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from tests.helpers.wandb_reader import (  # noqa: E402
    find_run_file,
    history_rows,
    read_config,
    read_records,
)
from tokcal.core.metrics import DecisionMetrics, compute_metrics  # noqa: E402
from tokcal.errors import TokcalError  # noqa: E402
from tokcal.trackers import open_tracker  # noqa: E402
from tokcal.trackers.base import BINS_COLUMNS  # noqa: E402
from tokcal.trackers.wandb import tokcal_key, wandb_key  # noqa: E402


def make_metrics(seed: int, n: int = 64) -> DecisionMetrics:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=n)[:, :2]
    return compute_metrics(probs, rng.integers(0, 2, size=n), ["Accept", "Reject"])


def test_wandb_key_follows_the_trainer():
    assert wandb_key("eval_decision_ece") == "eval/decision_ece"
    assert wandb_key("eval_mmlu_decision_ece") == "eval/mmlu_decision_ece"
    assert wandb_key("test_decision_ece") == "test/decision_ece"
    assert wandb_key("loss") == "train/loss"


def test_tokcal_key_inverts_wandb_key():
    """Every key tokcal logs (scalars, histograms, images, tables, tags; any prefix) comes back."""
    m = compute_metrics(np.array([[0.7, 0.2], [0.1, 0.8]]), np.array([0, 1]), ["Accept", "Reject"],
                        prefix="eval_holdout_")
    keys = [*m.scalars, *(f"eval_holdout_decision_hist_{k}" for k in m.histograms), "eval_decision_reliability",
            "eval_decision_bins", "eval_tag_tokcal_backfill", "test_decision_ece", "loss", "train_x", "_step"]
    assert len(keys) > 25
    for key in keys:
        assert tokcal_key(wandb_key(key)) == key, key
    assert tokcal_key("eval/decision_ece") == "eval_decision_ece" and tokcal_key("_runtime") == "_runtime"


def test_rows_histograms_images_tables(wandb_offline):
    m200, m100 = make_metrics(0), make_metrics(1)
    tracker = open_tracker("wandb", project="tokcal-tests", run_name="t1", spool=False)
    info = tracker.describe()
    assert info["backend"] == "wandb" and info["mode"] == "offline" and info["run_id"] == tracker.run_id
    tracker.log_config({"spec": {"labels": ["Accept", "Reject"]}, "n_bins": 15})
    tracker.log_evaluation(m200, 200, samples=[{"id": 7, "p_accept": 0.4}], tags={"checkpoint": "ckpt-200"})
    tracker.log_evaluation(m100, 100)  # lower than the last step: must not be dropped
    assert tracker.logged_steps("eval_decision_ece") == set()  # offline: not available
    tracker.close()

    run_file = find_run_file(wandb_offline)
    rows = [r for r in history_rows(run_file) if "eval/decision_ece" in r]
    assert [r["train/global_step"] for r in rows] == [200, 100]
    for row, m in zip(rows, (m200, m100)):
        assert row["eval/decision_ece"] == pytest.approx(m.scalars["eval_decision_ece"])
        assert row["eval/avg_p_accept"] == pytest.approx(m.scalars["eval_avg_p_accept"])
        hist = row["eval/decision_hist_p_accept"]
        assert hist["_type"] == "histogram"
        assert hist["bins"] == pytest.approx(m.histograms["p_accept"].edges.tolist())
        assert hist["values"] == m.histograms["p_accept"].counts.tolist()
        for key in ("eval/decision_reliability", "eval/decision_reliability_positive", "eval/decision_histograms"):
            assert row[key]["_type"] == "image-file"
            assert (run_file.parent / "files" / row[key]["path"]).read_bytes()[:4] == b"\x89PNG"
        table = row["eval/decision_bins"]
        assert table["_type"] == "table-file"
        content = json.loads((run_file.parent / "files" / table["path"]).read_text())
        assert content["columns"] == list(BINS_COLUMNS)
        assert {r[0] for r in content["data"]} == {row["train/global_step"]}
        assert [r[5] for r in content["data"] if r[1] == "top_label"] == m.reliability.counts.tolist()
    assert rows[0]["eval/tag_checkpoint"] == "ckpt-200"
    samples = json.loads((run_file.parent / "files" / rows[0]["eval/decision_sample_table"]["path"]).read_text())
    assert samples["columns"] == ["step", "id", "p_accept"] and samples["data"] == [[200, 7, 0.4]]
    assert all("_step" in r for r in rows)  # W&B's own counter, never set by tokcal

    metrics = [r.metric for r in read_records(run_file) if r.WhichOneof("record_type") == "metric"]
    assert any(x.glob_name == "eval/*" and x.step_metric == "train/global_step" for x in metrics)
    assert read_config(run_file)["tokcal"] == {"spec": {"labels": ["Accept", "Reject"]}, "n_bins": 15}


def test_reuses_the_active_run(wandb_offline):
    run = wandb.init(project="tokcal-tests")  # what the Trainer's W&B integration does
    tracker = open_tracker("wandb", spool=False)
    assert tracker.run_id == run.id
    tracker.close()
    assert wandb.run is run  # not finished by tokcal
    with pytest.raises(TokcalError, match=rf"expected W&B run 'other', got run '{run.id}' already active"):
        open_tracker("wandb", run_id="other", spool=False)
    run.finish()


def test_offline_run_cannot_be_resumed(wandb_offline):
    with pytest.raises(TokcalError, match=r"W&B cannot resume an offline run: expected WANDB_MODE=online"):
        open_tracker("wandb", project="tokcal-tests", run_id="abc123", spool=False)
    assert wandb.run is None
    assert not list(wandb_offline.rglob("*.wandb"))  # no second run was started silently


def test_rows_prepared_off_the_training_thread_are_logged_from_it_in_order(wandb_offline):
    """The figures, media and tables of a row are built in a worker thread; ``run.log`` is
    called from the calling thread only (W&B's is not thread-safe), in step order, and the
    rows still being prepared are logged before W&B finishes the run, whoever finishes it."""
    import threading

    run = wandb.init(project="tokcal-tests")  # the Trainer's run: tokcal only attaches
    tracker = open_tracker("wandb", spool=False)
    metrics = {step: make_metrics(step) for step in (30, 10, 20)}
    calling = threading.get_ident()
    log_threads = []
    real_log = run.log
    run.log = lambda row, **kw: (log_threads.append(threading.get_ident()), real_log(row, **kw))[1]
    for step, m in metrics.items():
        tracker.log_evaluation(m, step)
    assert tracker._preparing  # prepared off this thread, not logged yet
    run_file = find_run_file(wandb_offline)
    run.finish()  # not tracker.close(): W&B logs what is still being prepared first
    assert log_threads and set(log_threads) == {calling}
    rows = [r for r in history_rows(run_file) if "eval/decision_ece" in r]
    assert [r["train/global_step"] for r in rows] == [30, 10, 20]
    for r in rows:
        assert r["eval/decision_ece"] == pytest.approx(metrics[r["train/global_step"]].scalars["eval_decision_ece"])
        assert r["eval/decision_reliability"]["_type"] == "image-file"
    tracker.close()  # nothing left to log; the run was not tokcal's to finish
