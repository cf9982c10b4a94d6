"""The per-sample record of every evaluation (``tokcal.core.per_sample``): its format,
every backend storing it and reading it back (local store, a real MLflow server, W&B
offline files), the live callback and backfill giving the same ids, and flips from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokcal.core.metrics import compute_metrics
from tokcal.core.per_sample import PerSample, file_name
from tokcal.core.scores import DecisionScores
from tokcal.core.trajectories import TURN_BITS, decision_keys, trajectories
from tokcal.errors import TokcalError
from tokcal.trackers import open_tracker
from tokcal.trackers.local import LocalTracker, read_local, read_local_store

LABELS = ["Accept", "Reject"]


def random_record(seed: int, n: int = 50, *, k: int = 2, ids: bool = False, turns: bool = False) -> PerSample:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k + 1), size=n)[:, :k]
    index = np.sort(rng.choice(10 * n, size=n, replace=False)) if not turns else np.repeat(np.arange(n // 2), 2)
    turn = decision_keys(index) & ((1 << TURN_BITS) - 1)
    labels = LABELS if k == 2 else [f"L{j}" for j in range(k)]
    return PerSample(labels, index, rng.integers(0, k, size=n), probs, turn,
                     [f"paper-{i}" for i in index] if ids else None)


def same(a: PerSample, b: PerSample, rtol: float = 1e-5) -> None:
    assert a.labels == b.labels
    for name in ("index", "turn", "gt"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(a.probs, b.probs, rtol=rtol, atol=1e-12)
    assert a.ids == b.ids


# ------------------------------------------------------------------------------ format


@pytest.mark.parametrize("ids,turns,k", [(False, False, 2), (True, False, 2), (False, True, 2), (True, True, 4)])
def test_json_round_trip(ids: bool, turns: bool, k: int):
    rec = random_record(3, ids=ids, turns=turns, k=k)
    back = PerSample.from_json(rec.to_json())
    same(rec, back)
    doc = json.loads(rec.to_json())
    assert ("turn" in doc) == turns and ("id" in doc) == ids and "text" not in doc


def test_compact_layout_and_size():
    """0..n-1 indices and all-zero turns are left out; 10,000 binary decisions stay near 200 KB."""
    rng = np.random.default_rng(0)
    n = 10_000
    rec = PerSample(LABELS, np.arange(n), rng.integers(0, 2, n), rng.dirichlet([1, 1, 1], n)[:, :2])
    data = rec.to_json()
    doc = json.loads(data)
    assert set(doc) == {"format", "version", "labels", "n", "gt", "p"}
    assert len(data) < 260_000
    same(rec, PerSample.from_json(data))


def test_text_nan_and_derived_columns_against_a_loop():
    probs = np.array([[0.7, 0.2], [0.1, 0.3], [np.nan, 0.5], [0.0, 0.0]])
    rec = PerSample(LABELS, [0, 1, 2, 3], [0, 0, 1, 1], probs, text=["a \u00e9", "b", "c", "d"])
    back = PerSample.from_json(rec.to_json())
    assert back.text == ["a \u00e9", "b", "c", "d"] and np.isnan(back.probs[2, 0])
    for i in (0, 1, 3):
        p = probs[i]
        q = p / p.sum() if p.sum() > 0 else np.full(2, 0.5)
        assert back.q_true[i] == pytest.approx(q[rec.gt[i]])
        assert back.confidence[i] == pytest.approx(q.max())
        assert back.correct[i] == (int(np.argmax(p)) == rec.gt[i])
        assert back.mass[i] == pytest.approx(p.sum())


def test_from_scores_keys_match_decision_keys():
    rng = np.random.default_rng(1)
    index = np.array([0, 0, 1, 2, 2, 2, 4])
    scores = DecisionScores(LABELS, rng.dirichlet([1, 1], 7), rng.integers(0, 2, 7), index,
                            sample_ids=["a", "b", "c", "d", "e"])
    rec = PerSample.from_scores(scores)
    np.testing.assert_array_equal(rec.keys, decision_keys(index))
    assert rec.turn.tolist() == [0, 1, 0, 0, 1, 2, 0]
    assert rec.ids == ["a", "a", "b", "c", "c", "c", "e"]
    assert rec.sample_name(1) == "a (turn 1)"
    # Ids that are just the indices are not stored twice.
    plain = DecisionScores(LABELS, scores.probs, scores.gt, index, sample_ids=list(range(5)))
    assert PerSample.from_scores(plain).ids is None


@pytest.mark.parametrize("change,match", [
    (lambda d: d.update(format="other"), "expected a 'tokcal-per-sample' document"),
    (lambda d: d.update(version=9), "upgrade tokcal"),
    (lambda d: d.pop("gt"), "expected labels, n, gt and p"),
    (lambda d: d.update(n=7), "expected labels, n, gt and p"),
    (lambda d: d.update(gt=[5] * d["n"]), "expected gt in"),
])
def test_broken_documents_fail_in_one_line(change, match):
    doc = json.loads(random_record(0, n=6).to_json())
    change(doc)
    with pytest.raises(TokcalError, match=match) as err:
        PerSample.from_json(json.dumps(doc), where="x.json")
    assert str(err.value).startswith("x.json") or "expected gt" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(TokcalError, match="unreadable text"):
        PerSample.from_json(b"{not json", where="x.json")


def test_tracker_checks_the_record_before_writing(tmp_path: Path):
    tracker = LocalTracker(tmp_path)
    m = compute_metrics(np.array([[0.8, 0.1]]), np.array([0]), LABELS)
    with pytest.raises(TokcalError, match="expected per_sample to be a PerSample"):
        tracker.log_evaluation(m, 1, per_sample={"gt": [0]})  # type: ignore[arg-type]
    other = PerSample(["Yes", "No"], [0], [0], [[0.8, 0.1]])
    with pytest.raises(TokcalError, match=r"expected per_sample labels \['Accept', 'Reject'\]"):
        tracker.log_evaluation(m, 1, per_sample=other)
    with pytest.raises(TokcalError, match="expected a per_sample record of 1 decisions"):
        tracker.log_evaluation(m, 1, per_sample=PerSample(LABELS, [0, 1], [0, 0], [[0.8, 0.1], [0.2, 0.3]]))
    assert read_local_store(tracker.directory) == []  # nothing half-written


# ------------------------------------------------------------------------------ backends


def metrics_of(rec: PerSample, prefix: str = "eval_"):
    return compute_metrics(rec.probs, rec.gt, rec.labels, prefix=prefix)


def test_local_store_round_trip(tmp_path: Path):
    tracker = LocalTracker(tmp_path, run_name="r")
    recs = {10: random_record(1, ids=True), 20: random_record(2, ids=True)}
    for step, rec in recs.items():
        tracker.log_evaluation(metrics_of(rec), step, per_sample=rec)
    tracker.log_evaluation(metrics_of(recs[10], "eval_holdout_"), 10)  # no record
    assert (tracker.directory / file_name(20, "eval_")).is_file()
    series = read_local(tracker.directory)
    assert {s.name for s in series} == {f"local r ({tracker.run_id}) · eval", f"local r ({tracker.run_id}) · eval_holdout"}
    by_name = {s.name.split("·")[-1].strip(): s for s in series}
    for p in by_name["eval"].points:
        same(recs[p.step], p.per_sample)
    assert by_name["eval_holdout"].points[0].per_sample is None
    (tracker.directory / file_name(10, "eval_")).unlink()
    with pytest.raises(TokcalError, match="which is missing; restore it or remove that line"):
        read_local(tracker.directory)


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


def test_mlflow_server_round_trip(mlflow_server: str, no_mlflow_env):
    pytest.importorskip("mlflow")
    from tokcal.trackers.mlflow import read_mlflow

    tracker = open_tracker("mlflow", tracking_uri=mlflow_server, experiment="tokcal-per-sample", spool=False)
    recs = {200: random_record(5, turns=True), 100: random_record(6)}
    for step, rec in recs.items():  # out of order, as backfill writes
        tracker.log_evaluation(metrics_of(rec), step, per_sample=rec)
    tracker.close()
    [series] = read_mlflow(tracker.run_id, mlflow_server)
    assert series.steps == [100, 200]
    for p in series.points:
        same(recs[p.step], p.per_sample)
        assert p.metrics.risk_coverage is not None  # the curve travels in the bins artifact now
        np.testing.assert_allclose(p.metrics.risk_coverage.risk, metrics_of(recs[p.step]).risk_coverage.risk)


def test_wandb_offline_run_file_and_line_plots(wandb_offline: Path):
    pytest.importorskip("wandb")
    from tests.helpers.wandb_reader import find_run_file, history_rows, read_config, read_records

    tracker = open_tracker("wandb", project="tokcal-per-sample", spool=False)
    recs = {4: random_record(7, ids=True), 2: random_record(8, turns=True)}
    for step, rec in recs.items():
        tracker.log_evaluation(metrics_of(rec), step, per_sample=rec)
    tracker.close()
    run_file = find_run_file(wandb_offline)
    rows = [r for r in history_rows(run_file) if "eval/decision_ece" in r]
    assert [r["train/global_step"] for r in rows] == [4, 2]
    files = run_file.parent / "files"
    # The records are run files that W&B was told to upload (a "files" record each).
    saved = {f.path for rec in read_records(run_file) if rec.WhichOneof("record_type") == "files"
             for f in rec.files.files}
    for step, rec in recs.items():
        name = f"tokcal/{file_name(step, 'eval_')}"
        assert name in saved
        same(rec, PerSample.from_json((files / name).read_bytes()))
    for row in rows:
        step = row["train/global_step"]
        m = metrics_of(recs[step])
        for key, (x, y) in {"eval/decision_reliability_curve": ("confidence", "accuracy"),
                            "eval/decision_risk_coverage": ("coverage", "risk")}.items():
            table_ref = row[f"{key}_table"]
            table = json.loads((files / table_ref["path"]).read_text())
            assert table["columns"][:2] == [x, y], key
            assert table_ref["_type"] == "table-file"
        curve = json.loads((files / row["eval/decision_reliability_curve_table"]["path"]).read_text())
        keep = m.reliability.counts > 0
        np.testing.assert_allclose([r[1] for r in curve["data"]], m.reliability.accuracy[keep])
        assert sum(r[2] for r in curve["data"]) == len(recs[step])
        rc = json.loads((files / row["eval/decision_risk_coverage_table"]["path"]).read_text())
        np.testing.assert_allclose([r[1] for r in rc["data"]], m.risk_coverage.risk[np.isfinite(m.risk_coverage.risk)])
    # Each plot is a line chart over the latest table of every run in the workspace.
    charts = read_config(run_file)["_wandb"]["visualize"]
    for key, x in (("eval/decision_reliability_curve", "confidence"), ("eval/decision_risk_coverage", "coverage")):
        cfg = charts[key]["panel_config"]
        assert cfg["panelDefId"] == "wandb/line/v0" and cfg["fieldSettings"]["x"] == x
        [query] = cfg["userQuery"]["queryFields"]
        assert query["name"] == "runSets"
        [table_arg] = [f for f in query["fields"] if f["name"] == "summaryTable"][0]["args"]
        assert table_arg["value"] == f"{key}_table"


def test_report_reads_wandb_records_through_the_api(wandb_offline: Path, monkeypatch):
    """``read_wandb`` lists the run's files and downloads its records, through ``wandb.Api``
    serving this offline run's own files (the W&B service cannot be reached here)."""
    wandb = pytest.importorskip("wandb")
    from tests.helpers.wandb_reader import OfflineRun, find_run_file
    from tokcal.trackers.wandb import read_wandb

    tracker = open_tracker("wandb", project="p", spool=False)
    tracker.log_config({"tokcal": {"spec": {"labels": LABELS}}})
    recs = {30: random_record(11, ids=True), 10: random_record(12)}
    for step, rec in recs.items():
        tracker.log_evaluation(metrics_of(rec), step, per_sample=rec)
    tracker.log_evaluation(metrics_of(recs[10]), 20)  # one without a record
    tracker.close()
    run = OfflineRun(find_run_file(wandb_offline), name="w")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr(wandb, "Api", lambda timeout=None: type("Api", (), {"run": lambda self, path: run})())
    [series] = read_wandb("me/p/" + run.id)
    assert series.steps == [10, 20, 30]
    same(recs[10], series.points[0].per_sample)
    assert series.points[1].per_sample is None
    same(recs[30], series.points[2].per_sample)


# ------------------------------------------------------------------ live and backfilled


@pytest.mark.slow
def test_live_and_backfilled_records_join_and_flips_agree(tiny_bpe_checkpoint: Path, tmp_path: Path):
    """A real run with the callback (local store) saving a checkpoint at each evaluation,
    then backfill of those checkpoints: the same keys, the same probabilities, and the
    flips the callback logged equal a direct computation from backfill's JSONL files and
    the flips backfill logged."""
    from tests.helpers.training import train_tiny
    from tokcal.callbacks.decision import DecisionTrackingCallback
    from tokcal.data.records import read_records
    from tokcal.jobs.backfill import backfill
    from tokcal.jobs.report import extract_per_sample

    out = tmp_path / "out"
    train_tiny(tiny_bpe_checkpoint, out, callbacks=[DecisionTrackingCallback(backend="local")],
               max_steps=8, eval_steps=2, n_train=32, n_eval=24, learning_rate=3e-2)
    [live] = read_local(out / "tokcal")
    assert live.steps == [2, 4, 6, 8] and all(p.per_sample is not None for p in live.points)
    for p in live.points:  # the record gives back the logged numbers
        again = metrics_of(p.per_sample)
        for key in ("eval_decision_accuracy", "eval_decision_prob_mass", "eval_avg_p_accept"):
            assert again.scalars[key] == pytest.approx(p.metrics.scalars[key], rel=1e-4), key
        assert p.per_sample.index.tolist() == list(range(24)) and p.per_sample.ids is None

    store = tmp_path / "bf"
    report = backfill([out], out / "eval.jsonl", LocalTracker(store), progress=False)
    assert report.ok and [r.step for r in report.logged] == [2, 4, 6, 8]
    [back] = read_local(store)
    for lp, bp in zip(live.points, back.points):
        np.testing.assert_array_equal(lp.per_sample.keys, bp.per_sample.keys)
        np.testing.assert_allclose(lp.per_sample.probs, bp.per_sample.probs, rtol=1e-3, atol=1e-6)
        assert bp.per_sample.ids == [r["id"] for r in read_records(out / "eval.jsonl")]

    records = [extract_per_sample(read_records(out / "tokcal" / "backfill" / f"checkpoint-{s}.decisions.jsonl"), LABELS)
               for s in live.steps]
    direct = trajectories([r.keys for r in records], [r.correct for r in records], live.steps)
    from_live = trajectories([p.per_sample.keys for p in live.points], [p.per_sample.correct for p in live.points],
                             live.steps)
    assert direct.flips_to_wrong.tolist() == from_live.flips_to_wrong.tolist()
    assert direct.flips_to_right.tolist() == from_live.flips_to_right.tolist()
    for t, (lp, bp) in enumerate(zip(live.points, back.points)):
        for name in ("flips_to_wrong", "flips_to_right", "forgotten"):
            want = float(getattr(direct, name)[t])
            if t == 0:
                assert f"eval_decision_{name}" not in lp.metrics.scalars
            else:
                assert lp.scalar(f"decision_{name}") == want, (name, t)
                assert bp.scalar(f"decision_{name}") == want, (name, t)
    assert direct.flips_to_wrong.sum() + direct.flips_to_right.sum() > 0, "a run where nothing flips tests little"
