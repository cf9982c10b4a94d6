"""A fourth backend added at run time: one class in this file, registered by name, and the
callback, ``tokcal backfill``, ``tokcal sync`` and ``tokcal report`` use it with no change
anywhere else. What this needs is what docs/trackers.md ("Adding a backend") says."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokcal.cli.main import main
from tokcal.core.metrics import DecisionMetrics, compute_metrics
from tokcal.core.per_sample import PerSample
from tokcal.core.trajectories import trajectories
from tokcal.errors import TokcalError
from tokcal.jobs.backfill import MARKER
from tokcal.jobs.report import read_source
from tokcal.jobs.settings import TrackingSettings
from tokcal.trackers import SpoolingTracker, open_tracker
from tokcal.trackers.base import (
    DEFAULT_LOCAL_DIR,
    Point,
    Series,
    Tracker,
    backend_class,
    backend_names,
    dumps_line,
    finite_scalars,
    is_backfilled,
    register_backend,
    unregister_backend,
)
from tokcal.trackers.targets import open_targets, tracker_targets

LABELS = ["Accept", "Reject"]


class JsonLinesTracker(Tracker):
    """A whole backend: one JSON line per evaluation in ``<folder>/<run_id>.jsonl``.

    The folder stands for a server: when it is missing, a write fails (and is spooled,
    since the backend is ``remote``). ``thread_safe = False``: the callback logs from the
    training thread, which each line records.
    """

    name = "jsonl"
    options = ("folder",)
    remote = True
    thread_safe = False
    source_prefix = "jsonl:"
    source_form = "jsonl:FOLDER/RUN_ID"

    def __init__(self, *, folder: str | Path, run_id: str | None = None, run_name: str | None = None) -> None:
        self._folder = Path(folder)
        self._run_id = run_id or uuid.uuid4().hex[:12]

    @classmethod
    def open(cls, *, run_id: str | None = None, run_name: str | None = None,
             local_dir: str | Path = DEFAULT_LOCAL_DIR, folder: str | None = None) -> JsonLinesTracker:
        if folder is None:  # the tracking settings have no 'folder': the callback's local folder then
            Path(local_dir).mkdir(parents=True, exist_ok=True)
        return cls(folder=folder or local_dir, run_id=run_id, run_name=run_name)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def file(self) -> Path:
        return self._folder / f"{self._run_id}.jsonl"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "run_id": self._run_id, "folder": str(self._folder)}

    def log_config(self, config: dict[str, Any]) -> None:
        (self._folder / f"{self._run_id}.config.json").write_text(json.dumps(config))

    def _write_evaluation(self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
                          per_sample: PerSample | None, tags: dict[str, Any]) -> None:
        line = {"step": step, "tags": tags, "thread": threading.current_thread().name, **metrics.to_dict(),
                "per_sample": None if per_sample is None else per_sample.to_json().decode()}
        with open(self.file, "ab") as fh:  # no mkdir: a missing folder is a server that is down
            fh.write(dumps_line(line))

    def logged_steps(self, key: str) -> set[int]:
        return {r["step"] for r in _lines(self.file) if key in r["scalars"]}

    @classmethod
    def read_runs(cls, address: str, overrides: Mapping[str, Any] | None = None) -> list[Series]:
        file = Path(f"{address}.jsonl")
        by_prefix: dict[str, list[Point]] = {}
        for r in _lines(file):
            m = DecisionMetrics.from_dict(r)
            record = PerSample.from_json(r["per_sample"]) if r.get("per_sample") else None
            by_prefix.setdefault(m.prefix, []).append(Point(r["step"], m, is_backfilled(r["tags"]), record))
        return [Series.of(f"jsonl {file.stem} · {prefix.rstrip('_')}", points, str(file))
                for prefix, points in sorted(by_prefix.items())]

    @classmethod
    def read_described(cls, described: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return cls.read_runs(f"{described['folder']}/{described['run_id']}")


def _lines(file: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in file.read_text().splitlines()] if file.is_file() else []


@pytest.fixture
def jsonl_backend():
    register_backend(JsonLinesTracker)
    yield JsonLinesTracker
    unregister_backend("jsonl")
    assert "jsonl" not in backend_names()


def make_metrics(seed: int, prefix: str = "eval_") -> DecisionMetrics:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=64)[:, :2]
    return compute_metrics(probs, rng.integers(0, 2, size=64), LABELS, prefix=prefix)


def assert_same(point: Point, want: DecisionMetrics) -> None:
    assert point.metrics.scalars == pytest.approx(finite_scalars(want), rel=1e-12)
    np.testing.assert_array_equal(point.metrics.reliability.counts, want.reliability.counts)
    for k, h in want.histograms.items():
        np.testing.assert_array_equal(point.metrics.histograms[k].counts, h.counts)


def test_registry_and_options(jsonl_backend, tmp_path):
    assert backend_names() == ("local", "mlflow", "wandb", "tensorboard", "jsonl")
    assert backend_class("JSONL") is JsonLinesTracker
    with pytest.raises(TokcalError, match="expected a new lower-case backend name, got 'jsonl'"):
        register_backend(JsonLinesTracker)
    tracker = open_tracker("jsonl", folder=tmp_path)
    assert isinstance(tracker, SpoolingTracker) and not tracker.thread_safe  # remote: spooled; in-thread
    assert tracker.spool_dir == Path(DEFAULT_LOCAL_DIR) / "spool"
    assert isinstance(open_tracker("jsonl", folder=tmp_path, spool=False), JsonLinesTracker)
    with pytest.raises(TokcalError, match="folder applies to the jsonl backend; expected it unset for backend 'mlflow"):
        open_tracker("mlflow", folder=str(tmp_path))
    with pytest.raises(TokcalError, match="tracking_uri applies to the mlflow backend.*backend 'jsonl'"):
        open_tracker("jsonl", folder=tmp_path, tracking_uri="http://h")
    assert TrackingSettings(backend=["jsonl", "local"]).backend == ("jsonl", "local")
    kw = TrackingSettings(backend="jsonl", project="p").tracker_kwargs("jsonl", local_dir="out/tokcal")
    assert kw == {"local_dir": "out/tokcal", "run_id": None, "run_name": None}  # W&B's project is not its option
    assert TrackingSettings().backends_for("all") == ["mlflow", "wandb", "tensorboard"]  # no Trainer integration of its own

    # The base class checks the arguments once, before the backend writes anything.
    plain = open_tracker("jsonl", folder=tmp_path, spool=False)
    for bad, message in (({"step": -1}, "expected step to be an integer >= 0"),
                         ({"step": 1, "samples": [1]}, "expected samples to be a list of dicts"),
                         ({"step": 1, "tags": ["x"]}, "expected tags to be a dict")):
        with pytest.raises(TokcalError, match=message):
            plain.log_evaluation(make_metrics(0), **bad)
    with pytest.raises(TokcalError, match="expected metrics to be a DecisionMetrics"):
        plain.log_evaluation({"eval_decision_ece": 0.1}, 1)
    assert not plain.file.exists()


def test_outage_spool_sync_and_report(jsonl_backend, tmp_path, capsys):
    server = tmp_path / "server"  # missing: "down"
    metrics = {s: make_metrics(s) for s in (10, 20, 30)}
    tracker = open_tracker("jsonl", folder=server, local_dir=tmp_path / "tokcal")
    for s, m in metrics.items():
        tracker.log_evaluation(m, s, tags=dict(MARKER) if s == 20 else None)  # spooled, no exception
    assert tracker.spooled == 3
    server.mkdir()  # back up; step 30 reached the run another way meanwhile
    open_tracker("jsonl", folder=server, run_id=tracker.run_id, spool=False).log_evaluation(metrics[30], 30)

    assert main(["sync", str(tmp_path / "tokcal"), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(f"-> jsonl run {tracker.run_id}") == 3
    assert main(["sync", str(tmp_path / "tokcal"), "--backend", "jsonl"]) == 0
    assert "replayed 2 entries (" in capsys.readouterr().out
    assert tracker.inner.logged_steps("eval_decision_ece") == {10, 20, 30}
    assert sorted(r["step"] for r in _lines(tracker.inner.file)) == [10, 20, 30]  # nothing doubled

    (series,) = read_source(f"jsonl:{server}/{tracker.run_id}")
    assert series.steps == [10, 20, 30] and [p.backfilled for p in series.points] == [False, True, False]
    for p in series.points:
        assert_same(p, metrics[p.step])
    out = tmp_path / "report.html"
    assert main(["report", f"jsonl:{server}/{tracker.run_id}", "--output", str(out), "--no-step-figures"]) == 0
    assert "3 steps (10..30), 1 backfilled" in capsys.readouterr().out and out.is_file()
    with pytest.raises(TokcalError, match="jsonl:FOLDER/RUN_ID, a training output folder"):
        read_source(str(tmp_path / "missing"))


@pytest.mark.slow  # trains and scores a tiny model
def test_callback_backfill_and_report(jsonl_backend, tiny_bpe_checkpoint, tmp_path, capsys):
    from tokcal import DecisionTrackingCallback
    from tests.helpers.training import train_tiny
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint

    out = tmp_path / "out"
    train_tiny(tiny_bpe_checkpoint, out, callbacks=[DecisionTrackingCallback(backend="jsonl")], max_steps=4,
               eval_steps=2, n_train=16, n_eval=9)
    (described,) = json.loads((out / "tokcal.json").read_text())["trackers"]
    assert described["backend"] == "jsonl" and described["folder"] == str(out / "tokcal")
    file = out / "tokcal" / f"{described['run_id']}.jsonl"
    live = _lines(file)
    assert [r["step"] for r in live] == [2, 4]
    assert {r["thread"] for r in live} == {threading.main_thread().name}  # thread_safe = False: not the background
    own = {s: score_checkpoint(out / f"checkpoint-{s}", out / "eval.jsonl", DecisionSpec(), progress=False).metrics()
           for s in (2, 4)}
    for r in live:
        assert r["scalars"]["eval_decision_prob_mass"] == pytest.approx(
            own[r["step"]].scalars["eval_decision_prob_mass"], abs=1e-5)

    # Backfill reopens the run from tokcal.json (the backend's reopen_kwargs), and skips the logged steps.
    (target,) = tracker_targets(json.loads((out / "tokcal.json").read_text()))
    assert target == {"backend": "jsonl", "run_id": described["run_id"], "folder": str(out / "tokcal")}
    (reopened,) = open_targets([target])
    assert reopened.logged_steps("eval_decision_samples") == {2, 4}
    assert main(["backfill", str(out), "--data", str(out / "eval.jsonl"), "--quiet"]) == 0
    assert "0 logged, 2 skipped, 0 failed" in capsys.readouterr().out
    assert main(["backfill", str(out), "--data", str(out / "eval.jsonl"), "--quiet",
                 "--metric-prefix", "eval_holdout_", "--output-dir", str(tmp_path / "o")]) == 0
    assert "2 logged, 0 skipped, 0 failed" in capsys.readouterr().out

    series = {s.points[0].metrics.prefix: s for s in read_source(str(out))}  # the runs tokcal.json records
    assert series["eval_"].steps == [2, 4] and not any(p.backfilled for p in series["eval_"].points)
    assert series["eval_holdout_"].steps == [2, 4] and all(p.backfilled for p in series["eval_holdout_"].points)
    flips = ("decision_flips_to_wrong", "decision_flips_to_right", "decision_forgotten")
    for p in series["eval_holdout_"].points:
        want = own[p.step].scalars
        got = {k.replace("eval_holdout_", "eval_", 1): v for k, v in p.metrics.scalars.items()}
        got = {k: v for k, v in got.items() if v is not None and not np.isnan(v)}  # undefined: NaN or absent
        got = {k: v for k, v in got.items() if k[len("eval_"):] not in flips}  # extract has no flips
        assert got == pytest.approx({k: v for k, v in want.items() if not np.isnan(v)}, rel=1e-12)
    # The per-sample records went through this backend too: the flips backfill logged at step 4
    # are those between the live records of steps 2 and 4 (same ids, same decisions).
    live_recs = [p.per_sample for p in series["eval_"].points]
    back_recs = [p.per_sample for p in series["eval_holdout_"].points]
    assert all(r is not None for r in live_recs + back_recs)
    np.testing.assert_array_equal(live_recs[0].keys, back_recs[0].keys)
    direct = trajectories([r.keys for r in live_recs], [r.correct for r in live_recs], [2, 4])
    step4 = series["eval_holdout_"].points[1]
    assert [step4.scalar(f) for f in flips] == [float(direct.flips_to_wrong[1]), float(direct.flips_to_right[1]),
                                                float(direct.forgotten[1])]
    assert series["eval_"].points[1].scalar(flips[0]) == float(direct.flips_to_wrong[1])  # the callback's own count
