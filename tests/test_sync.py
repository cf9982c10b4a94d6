"""The failure spool and ``tokcal sync``: stop the MLflow server mid-run, keep logging,
restart it, replay; the history is complete and has no duplicates."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from tokcal.cli.main import main  # noqa: E402
from tokcal.core.metrics import DecisionMetrics, compute_metrics  # noqa: E402
from tokcal.core.per_sample import PerSample  # noqa: E402
from tokcal.trackers import SpoolingTracker, open_tracker  # noqa: E402
from tokcal.trackers.mlflow import read_mlflow  # noqa: E402


def make_metrics(seed: int, n: int = 64) -> DecisionMetrics:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=n)[:, :2]
    return compute_metrics(probs, rng.integers(0, 2, size=n), ["Accept", "Reject"])


def test_outage_spool_and_sync(mlflow_server_process, tmp_path, monkeypatch, caplog, capsys):
    server = mlflow_server_process
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while the server is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = server.uri.replace("http://", "http://alice:hunter2@")  # must never show up anywhere
    spool = tmp_path / "spool"
    metrics = {step: make_metrics(step) for step in (10, 20, 30)}
    rng = np.random.default_rng(20)
    record = PerSample(["Accept", "Reject"], np.arange(64), rng.integers(0, 2, 64),
                       rng.dirichlet([1, 1, 1], 64)[:, :2], ids=[f"p{i}" for i in range(64)])
    metrics[20] = compute_metrics(record.probs, record.gt, record.labels)

    tracker = open_tracker("mlflow", tracking_uri=uri, spool_dir=spool, local_dir=tmp_path)
    assert isinstance(tracker, SpoolingTracker)
    run_id = tracker.run_id
    tracker.log_evaluation(metrics[10], 10)

    server.stop()
    with caplog.at_level(logging.WARNING):
        tracker.log_evaluation(metrics[20], 20, tags={"checkpoint": "ckpt-20"}, per_sample=record)  # no exception
        tracker.log_evaluation(metrics[30], 30)
        tracker.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("tokcal")]
    assert len(warnings) == 1, caplog.text  # one warning, not one per failure
    assert "Replay them with: tokcal sync" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text
    entries = [json.loads(f.read_text()) for f in spool.glob("*.spool.json")]
    assert sorted((e["kind"], e["step"]) for e in entries) == [("close", 0), ("evaluation", 20), ("evaluation", 30)]
    assert all(e["target"]["tracking_uri"] == uri.replace("hunter2", "***") for e in entries)
    assert not any("hunter2" in f.read_text() for f in spool.glob("*.spool.json"))

    # While the server is still down, sync fails with one line and keeps the spool.
    capsys.readouterr()
    assert main(["sync", str(tmp_path), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokcal sync: error: could not open MLflow run") and "hunter2" not in err
    assert len(list(spool.glob("*.spool.json"))) == 3

    server.start()
    # Step 30 reached the run some other way in the meantime: sync must not double it.
    direct = open_tracker("mlflow", tracking_uri=uri, run_id=run_id, spool=False)
    direct.log_evaluation(metrics[30], 30)
    assert main(["sync", str(tmp_path), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    # step 20 and the run's end replayed; step 30 skipped
    assert "replayed 2 entries" in out and "1 were already there; 0 left" in out and "hunter2" not in out
    assert not list(spool.glob("*.spool.json"))
    assert main(["sync", str(spool), "--tracking-uri", uri]) == 0  # a second sync is a no-op
    assert "nothing to sync" in capsys.readouterr().out

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    for key in ("eval_decision_ece", "eval_avg_p_accept", "eval_decision_samples"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(s, pytest.approx(metrics[s].scalars[key])) for s in (10, 20, 30)]
    run = client.get_run(run_id)
    assert run.data.tags["checkpoint"] == "ckpt-20"
    assert run.info.status == "FINISHED"  # the close that failed during the outage, replayed
    # The per-sample record travelled through the spool.
    [series] = read_mlflow(run_id, server.uri)
    back = {p.step: p.per_sample for p in series.points}
    assert back[10] is None and back[30] is None
    np.testing.assert_allclose(back[20].probs, record.probs, rtol=1e-5)
    assert back[20].ids == record.ids and back[20].gt.tolist() == record.gt.tolist()


def test_sync_into_a_deleted_run_says_what_to_do(mlflow_server, tmp_path, monkeypatch, capsys):
    """A run deleted in MLflow (``client.delete_run``) refuses every write: sync says so in
    one line with the way forward, and that way works (``mlflow runs restore``, or another
    run with --run-id)."""
    import os
    import subprocess
    import sys

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKCAL_LOCK_DIR", str(tmp_path / "locks"))
    spool = tmp_path / "spool"
    client = mlflow.MlflowClient(mlflow_server)
    tracker = open_tracker("mlflow", tracking_uri=mlflow_server, spool_dir=spool, local_dir=tmp_path)
    run_id = tracker.run_id
    tracker.log_evaluation(make_metrics(1), 10)
    client.delete_run(run_id)
    tracker.log_evaluation(make_metrics(2), 20)  # MLflow refuses: kept in the spool, training goes on
    tracker.log_evaluation(make_metrics(3), 30)
    assert len(list(spool.glob("*.spool.json"))) == 2

    capsys.readouterr()
    assert main(["sync", str(spool)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"MLflow run {run_id}" in err and "was deleted" in err
    assert f"mlflow runs restore --run-id {run_id}" in err and "--run-id" in err
    assert len(list(spool.glob("*.spool.json"))) == 2  # nothing lost

    other = client.create_run("0").info.run_id  # another run: --run-id replays there
    assert main(["sync", str(spool), "--run-id", other, "--dry-run"]) == 0
    restore = subprocess.run([sys.executable, "-m", "mlflow", "runs", "restore", "--run-id", run_id],
                             env=dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server), capture_output=True, text=True)
    assert restore.returncode == 0, restore.stderr  # the advice, followed as written
    assert main(["sync", str(spool)]) == 0
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval_decision_ece")) == [10, 20, 30]
