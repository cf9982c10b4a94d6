"""Which scalars become charts (``metrics``: the headline set by default, ``all``, or a list),
read back from a real MLflow server and from W&B's offline files after a real tiny training;
the figures as full-size PNG artifacts in MLflow; every scalar kept in the stored record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.training import train_tiny
from tokcal import DecisionTrackingCallback
from tokcal.errors import TokcalError
from tokcal.jobs.settings import TrackingSettings
from tokcal.jobs.state import read_state

pytestmark = pytest.mark.slow  # real (tiny) training runs

#: The headline set, written out here rather than taken from the code under test.
HEADLINE = {
    "eval_avg_p_accept", "eval_avg_p_reject", "eval_decision_prob_mass", "eval_decision_confidence",
    "eval_decision_accuracy", "eval_decision_ece", "eval_decision_smece", "eval_decision_brier", "eval_decision_nll",
    "eval_decision_auroc", "eval_decision_balanced_accuracy", "eval_decision_mcc", "eval_decision_aurc",
    "eval_decision_mass_p05", "eval_decision_samples", "eval_decision_missing", "eval_decision_nonfinite",
    "eval_decision_flips_to_wrong", "eval_decision_flips_to_right", "eval_decision_forgotten",
}


def tokcal_name(key: str) -> bool:
    return key.startswith(("eval_decision_", "eval_avg_p_"))


def history(trainer) -> dict[int, dict[str, float]]:
    """The callback's entries in the Trainer's log_history: step -> every finite tokcal scalar."""
    out = {}
    for entry in trainer.state.log_history:
        if "eval_decision_samples" in entry:
            out[entry["step"]] = {k: float(v) for k, v in entry.items()
                                  if tokcal_name(k) and not math.isnan(float(v))}
    return out


def expected_pairs(hist: dict[int, dict[str, float]], names: set[str] | None) -> set[tuple[str, int]]:
    return {(k, step) for step, values in hist.items() for k in values if names is None or k in names}


def mlflow_pairs(client, run_id: str) -> set[tuple[str, int]]:
    run = client.get_run(run_id)
    return {(k, int(m.step)) for k in run.data.metrics if tokcal_name(k)
            for m in client.get_metric_history(run_id, k)}


def wandb_pairs(rows: list[dict]) -> set[tuple[str, int]]:
    from tokcal.trackers.wandb import tokcal_key

    return {(tokcal_key(k), int(r["train/global_step"])) for r in rows for k, v in r.items()
            if tokcal_name(tokcal_key(k)) and isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.mark.parametrize("selection", ["default", "all"])
def test_default_and_all_read_back_from_mlflow_and_wandb(selection, tiny_bpe_checkpoint, tmp_path, mlflow_server,
                                                         wandb_offline, monkeypatch):
    import mlflow

    from tests.helpers.wandb_reader import find_run_file, history_rows
    from tokcal.trackers.mlflow import read_mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    options = {} if selection == "default" else {"metrics": "all"}
    callback = DecisionTrackingCallback(backend=["mlflow", "wandb"], tracking_uri=mlflow_server,
                                        experiment="dashboard", project="tokcal-dashboard", **options)
    trainer = train_tiny(tiny_bpe_checkpoint, out, callbacks=[callback])
    callback.close()  # end the runs now, while the server is up
    hist = history(trainer)
    assert sorted(hist) == [4, 8, 12]
    every = expected_pairs(hist, None)
    want = expected_pairs(hist, HEADLINE if selection == "default" else None)
    if selection == "default":
        # The Trainer keeps every scalar; the headline set is a small part of them.
        assert len(hist[12]) >= 35 and len({k for k, _ in want}) >= 15
        assert {"eval_decision_flips_to_wrong", "eval_decision_auroc"} <= set(hist[12])
    state = read_state(out / "tokcal.json")
    assert state["metrics"] == selection
    (ml,) = [t for t in state["trackers"] if t["backend"] == "mlflow"]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert mlflow_pairs(client, ml["run_id"]) == want

    # Every scalar stays in the stored record, and tokcal report reads all of them back.
    base = client.get_run(ml["run_id"]).info.artifact_uri
    for step, values in hist.items():
        table = mlflow.artifacts.load_dict(f"{base}/tokcal/eval/bins_step_{step:06d}.json")
        assert table["scalars"] == pytest.approx(values, rel=1e-12)
    (series,) = read_mlflow(ml["run_id"], mlflow_server)
    assert {p.step: p.metrics.scalars for p in series.points} == {s: pytest.approx(v, rel=1e-6)
                                                                   for s, v in hist.items()}

    # The figures: full-size PNGs, one folder per figure, file names that sort by step.
    for figure in ("reliability", "reliability_positive", "histograms"):
        paths = [a.path for a in client.list_artifacts(ml["run_id"], f"tokcal/plots/eval/{figure}")]
        assert paths == [f"tokcal/plots/eval/{figure}/step_{s:06d}.png" for s in (4, 8, 12)]
    assert client.list_artifacts(ml["run_id"], "images") == []  # no log_image thumbnails
    png = Path(client.download_artifacts(ml["run_id"], "tokcal/plots/eval/reliability/step_000012.png", str(tmp_path)))
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] >= 500 and img.size[1] >= 600  # the figure's own pixels, not a 213x256 thumbnail

    run_file = find_run_file(wandb_offline)
    assert wandb_pairs(history_rows(run_file)) == {(k, s) for k, s in want}
    files = run_file.parent / "files" / "tokcal"
    for step, values in hist.items():
        assert json.loads((files / f"step_{step:06d}_eval_scalars.json").read_text()) == pytest.approx(values,
                                                                                                       rel=1e-12)
    assert every >= want

    # tokcal report reads the W&B run back whole: the charts and the scalars files.
    import wandb

    from tests.helpers.wandb_reader import OfflineRun
    from tokcal.trackers.wandb import read_wandb

    offline = OfflineRun(run_file, name="w")
    monkeypatch.setattr(wandb, "Api", lambda timeout=None: type("Api", (), {"run": lambda self, path: offline})())
    monkeypatch.delenv("WANDB_MODE")
    (series,) = read_wandb("me/tokcal-dashboard/x")
    assert {p.step: p.metrics.scalars for p in series.points} == {s: pytest.approx(v, rel=1e-12)
                                                                   for s, v in hist.items()}


def test_an_explicit_list_and_the_error_for_an_unknown_name(tiny_bpe_checkpoint, tmp_path, mlflow_server,
                                                             monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TokcalError, match="did you mean 'decision_ece'"):
        DecisionTrackingCallback(backend="mlflow", metrics=["decision_eec"])
    with pytest.raises(TokcalError, match="without the prefix"):
        TrackingSettings(metrics=["eval_decision_ece"])
    out = tmp_path / "out"
    callback = DecisionTrackingCallback(backend="mlflow", tracking_uri=mlflow_server, experiment="dashboard-list",
                                        metrics=["decision_ece", "avg_p_accept"])
    trainer = train_tiny(tiny_bpe_checkpoint, out, callbacks=[callback], max_steps=8)
    callback.close()
    hist = history(trainer)
    names = {"eval_decision_ece", "eval_avg_p_accept", "eval_decision_samples"}  # samples: always
    (ml,) = read_state(out / "tokcal.json")["trackers"]
    assert mlflow_pairs(mlflow.MlflowClient(tracking_uri=mlflow_server), ml["run_id"]) == expected_pairs(hist, names)


def test_yaml_metrics_all(tmp_path):
    cfg = tmp_path / "tokcal.yaml"
    cfg.write_text("tracking:\n  metrics: all\n")
    assert DecisionTrackingCallback(config=cfg).settings.metrics == "all"
    cfg.write_text("tracking:\n  metrics: [decision_ece, avg_p_reject]\n")
    assert DecisionTrackingCallback(config=cfg).settings.metrics == ("decision_ece", "avg_p_reject")
    assert TrackingSettings.from_dict(TrackingSettings(metrics=["decision_ece"]).to_dict()).metrics == ("decision_ece",)


def test_a_spooled_evaluation_keeps_its_selection_through_sync(mlflow_server_process, tmp_path, monkeypatch):
    """Logged with the headline set while the server is down, replayed by tokcal sync: the run
    gets the headline charts (not every metric), and every metric in the bins artifact."""
    import mlflow
    import numpy as np

    from tokcal.cli.main import main
    from tokcal.core.metrics import compute_metrics
    from tokcal.trackers import open_tracker

    server = mlflow_server_process
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKCAL_MLFLOW_MAX_RETRIES", "0")
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=80)[:, :2]
    m = compute_metrics(probs, rng.integers(0, 2, size=80), ["Accept", "Reject"])
    tracker = open_tracker("mlflow", tracking_uri=server.uri, spool_dir=tmp_path / "spool", local_dir=tmp_path)
    run_id = tracker.run_id
    server.stop()
    tracker.log_evaluation(m, 40, scalars="default")
    (entry,) = [json.loads(f.read_text()) for f in (tmp_path / "spool").glob("*.spool.json")
                if json.loads(f.read_text())["kind"] == "evaluation"]
    assert entry["scalars"] == "default"
    server.start()
    assert main(["sync", str(tmp_path / "spool"), "--tracking-uri", server.uri]) == 0
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    finite = {k: v for k, v in m.scalars.items() if not math.isnan(v)}
    assert mlflow_pairs(client, run_id) == {(k, 40) for k in finite if k in HEADLINE}
    base = client.get_run(run_id).info.artifact_uri
    assert mlflow.artifacts.load_dict(f"{base}/tokcal/eval/bins_step_000040.json")["scalars"] == \
        pytest.approx(finite, rel=1e-12)
    assert main(["sync", str(tmp_path / "spool"), "--tracking-uri", server.uri]) == 0  # nothing doubled
    assert mlflow_pairs(client, run_id) == {(k, 40) for k in finite if k in HEADLINE}
