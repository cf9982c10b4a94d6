"""The MLflow backend against a real ``mlflow server``, read back through ``MlflowClient``."""

from __future__ import annotations

import re

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from tokcal.core.metrics import DecisionMetrics, compute_metrics  # noqa: E402
from tokcal.errors import TokcalError  # noqa: E402
from tokcal.trackers import open_tracker  # noqa: E402
from tokcal.trackers.base import BINS_COLUMNS  # noqa: E402

IMAGE_KEYS = ("reliability", "reliability_positive", "histograms")


def make_metrics(seed: int, n: int = 64) -> DecisionMetrics:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=n)[:, :2]
    return compute_metrics(probs, rng.integers(0, 2, size=n), ["Accept", "Reject"])


def image_steps(client, run_id: str) -> dict[str, list[int]]:
    """Steps of the full-size PNGs per figure, from the artifact names
    (``tokcal/plots/eval/<figure>/step_000120.png``), in the order the store lists them."""
    found: dict[str, list[int]] = {}
    for folder in client.list_artifacts(run_id, "tokcal/plots/eval"):
        for info in client.list_artifacts(run_id, folder.path):
            m = re.match(r"tokcal/plots/eval/(.+)/step_(\d{6})\.png$", info.path)
            if m:
                found.setdefault(m.group(1), []).append(int(m.group(2)))
    return found


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


def test_steps_images_tables_and_finished_run(mlflow_server, no_mlflow_env):
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    m200, m100, m50 = make_metrics(0), make_metrics(1), make_metrics(2)
    tracker = open_tracker("mlflow", tracking_uri=mlflow_server, experiment="tokcal-tests", run_name="t1", spool=False)
    run_id = tracker.run_id
    tracker.log_config({"spec": {"labels": ["Accept", "Reject"], "prefix": "\\boxed{"}, "n_bins": 15})
    tracker.log_evaluation(m200, 200, samples=[{"id": 7, "p_accept": 0.4}], tags={"checkpoint": "ckpt-200"})
    tracker.log_evaluation(m100, 100)  # a step lower than one already logged
    tracker.close()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tokcal.spec.labels"] == '["Accept", "Reject"]'
    assert run.data.params["tokcal.n_bins"] == "15"
    assert run.data.tags["checkpoint"] == "ckpt-200"

    # Backfill into the FINISHED run, by id, at an even earlier step.
    again = open_tracker("mlflow", tracking_uri=mlflow_server, run_id=run_id, spool=False)
    again.log_evaluation(m50, 50)
    again.close()
    assert client.get_run(run_id).info.status == "FINISHED"  # attaching does not change it

    for key in ("eval_decision_ece", "eval_avg_p_accept", "eval_decision_brier"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [
            (50, pytest.approx(m50.scalars[key])),
            (100, pytest.approx(m100.scalars[key])),
            (200, pytest.approx(m200.scalars[key])),
        ]
    assert again.logged_steps("eval_decision_ece") == {50, 100, 200}
    assert image_steps(client, run_id) == {key: [50, 100, 200] for key in IMAGE_KEYS}

    base = client.get_run(run_id).info.artifact_uri
    bins = mlflow.artifacts.load_dict(f"{base}/tokcal/eval/bins_step_000100.json")
    assert bins["columns"] == list(BINS_COLUMNS)
    assert len(bins["data"]) == 2 * len(m100.reliability.counts)  # top-label and positive curves
    assert {row[0] for row in bins["data"]} == {100}
    assert [r[5] for r in bins["data"][:15]] == m100.reliability.counts.tolist()
    assert bins["histograms"]["p_accept"]["counts"] == m100.histograms["p_accept"].counts.tolist()
    samples = mlflow.artifacts.load_dict(f"{base}/tokcal/eval/samples_step_000200.json")
    assert samples == {"step": 200, "columns": ["step", "id", "p_accept"], "data": [[200, 7, 0.4]]}


def test_reuses_active_run_and_mlflow_run_id(mlflow_server, no_mlflow_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with mlflow.start_run() as active:  # what the Trainer's MLflow integration does
        tracker = open_tracker("mlflow", spool=False)
        assert tracker.run_id == active.info.run_id
        tracker.close()  # must not end a run it did not start
        assert mlflow.MlflowClient().get_run(active.info.run_id).info.status == "RUNNING"
    monkeypatch.setenv("MLFLOW_RUN_ID", active.info.run_id)
    assert open_tracker("mlflow", spool=False).run_id == active.info.run_id


def test_unknown_run_error_redacts_the_password(mlflow_server, no_mlflow_env):
    uri = mlflow_server.replace("http://", "http://alice:hunter2@")
    with pytest.raises(TokcalError) as info:
        open_tracker("mlflow", tracking_uri=uri, run_id="0123456789abcdef0123456789abcdef", spool=False)
    message = str(info.value)
    assert "hunter2" not in message
    assert "http://alice:***@127.0.0.1" in message
    assert message.startswith("could not open MLflow run '0123456789abcdef0123456789abcdef' at")


def test_default_store_is_mlflows_sqlite_file(tmp_path, no_mlflow_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = open_tracker("mlflow", spool=False)
    assert tracker.describe()["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "mlflow.db").is_file()
    tracker.close()


def test_reopening_a_run_recorded_with_a_hidden_password(tmp_path, no_mlflow_env, monkeypatch):
    """tokcal.json and the spool store ``***`` for a password: backfill's targets and sync ask
    for the real URI through one rule (flag, else MLFLOW_TRACKING_URI), each naming its file."""
    import json

    from tokcal.trackers.spool import sync_spool
    from tokcal.trackers.targets import tracker_targets

    real, hidden = "http://alice:hunter2@127.0.0.1:9/", "http://alice:***@127.0.0.1:9/"
    state = {"trackers": [{"backend": "mlflow", "run_id": "r" * 32, "tracking_uri": hidden}]}
    with pytest.raises(TokcalError, match=r"^tokcal.json records the MLflow tracking URI with its password hidden "
                                          r"\(http://alice:\*\*\*@.*expected --tracking-uri or MLFLOW_TRACKING_URI"):
        tracker_targets(state)
    assert tracker_targets(state, tracking_uri=real)[0]["tracking_uri"] == real
    monkeypatch.setenv("MLFLOW_TRACKING_URI", real)
    assert tracker_targets(state)[0] == {"backend": "mlflow", "run_id": "r" * 32, "tracking_uri": real,
                                         "experiment": None}
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    spool = tmp_path / "spool"
    spool.mkdir()
    entry = {"version": 1, "kind": "close", "step": 0, "target": state["trackers"][0]}
    (spool / "000000000-1-x.spool.json").write_text(json.dumps(entry))
    with pytest.raises(TokcalError, match=r"^000000000-1-x.spool.json: the spool records the MLflow tracking URI "
                                          r"with its password hidden"):
        sync_spool(spool)
    assert (spool / "000000000-1-x.spool.json").is_file()
