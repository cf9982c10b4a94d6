"""The TensorBoard backend, read back with TensorBoard's own EventAccumulator.

A real tiny Trainer run with ``report_to=["tensorboard"]`` and the callback on ``auto``:
tokcal's points sit in the Trainer's own run folder, every scalar equal to the callback's
metrics (the Trainer's log_history); then a backfill writes into the sibling
``_tokcal_backfill`` folder and TensorBoard's reader still has every point of both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from tokcal.cli.main import main
from tokcal.core.metrics import compute_metrics
from tokcal.core.per_sample import PerSample
from tokcal.errors import TokcalError
from tokcal.jobs.backfill import MARKER
from tokcal.jobs.report import read_source
from tokcal.jobs.settings import TrackingSettings
from tokcal.trackers import open_tracker
from tokcal.trackers.base import finite_scalars
from tokcal.trackers.tensorboard import BACKFILL_SUFFIX, TensorBoardTracker, tag_of

LABELS = ["Accept", "Reject"]


def metrics_for(seed: int, prefix: str = "eval_"):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=50)[:, :2]
    gt = rng.integers(0, 2, size=50)
    return compute_metrics(probs, gt, LABELS, prefix=prefix), probs, gt


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def tb_scalars(acc: EventAccumulator) -> dict[str, dict[int, float]]:
    """tag -> step -> value, for every scalar in a run folder (new- and old-style)."""
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["tensors"]:
        for e in acc.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto)
            if value.dtype.kind == "f" and value.size == 1:  # not the Trainer's text summaries
                out.setdefault(tag, {})[e.step] = float(value)
    for tag in acc.Tags()["scalars"]:
        for e in acc.Scalars(tag):
            out.setdefault(tag, {})[e.step] = e.value
    return out


def test_log_and_read_back(tmp_path):
    run = tmp_path / "runs" / "r1"
    logged = {}
    with open_tracker("tensorboard", logdir=str(run)) as tracker:
        for step in (20, 10, 30):  # any order: each step is its own event
            m, _, _ = metrics_for(step)
            logged[step] = m
            tracker.log_evaluation(m, step, per_sample=None)
        assert tracker.logged_steps("eval_decision_ece") == {10, 20, 30}
        assert tracker.describe() == {"backend": "tensorboard", "run_id": "r1", "logdir": str(run.resolve())}
    acc = events(run)
    got = tb_scalars(acc)
    for step, m in logged.items():
        for key, value in finite_scalars(m).items():
            assert got[tag_of(key)][step] == value  # double precision: exactly what was logged
    # the histograms on their fixed edges, the figures as images
    h = {e.step: e.histogram_value for e in acc.Histograms("eval/histogram_confidence")}
    want = logged[20].histograms["confidence"]
    assert list(h[20].bucket) == want.counts.tolist()
    assert [h[20].min, *h[20].bucket_limit] == pytest.approx(want.edges.tolist())
    assert sorted(e.step for e in acc.Images("eval/decision_reliability")) == [10, 20, 30]
    png = acc.Images("eval/decision_reliability")[0].encoded_image_string
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    (series,) = read_source(f"tensorboard:{run}")
    assert series.steps == [10, 20, 30] and not any(p.backfilled for p in series.points)
    for p in series.points:
        want = logged[p.step]
        assert p.metrics.scalars == finite_scalars(want)
        np.testing.assert_array_equal(p.metrics.reliability.counts, want.reliability.counts)
        np.testing.assert_array_equal(p.metrics.histograms["p_accept"].counts, want.histograms["p_accept"].counts)
        assert p.metrics.labels == LABELS


def test_backfill_goes_to_a_sibling_and_nothing_is_dropped(tmp_path):
    run = tmp_path / "runs" / "live"
    tracker = TensorBoardTracker(logdir=run)
    live = {s: metrics_for(s)[0] for s in (10, 20, 30)}
    for s, m in live.items():
        tracker.log_evaluation(m, s)
    # backfilled steps go back in time: in the live folder TensorBoard could purge them
    back = {s: metrics_for(100 + s, prefix="eval_holdout_") for s in (5, 15)}
    for s, (m, probs, gt) in back.items():
        tracker.log_evaluation(m, s, tags=dict(MARKER))
    tracker.close()
    sibling = run.parent / f"live{BACKFILL_SUFFIX}"
    assert sorted(p.name for p in run.parent.iterdir()) == ["live", f"live{BACKFILL_SUFFIX}"]
    assert sorted(tb_scalars(events(run))["eval/decision_ece"]) == [10, 20, 30]
    assert sorted(tb_scalars(events(sibling))["eval/holdout_decision_ece"]) == [5, 15]
    reopened = open_tracker("tensorboard", run_id=str(run))  # a path as run id
    assert reopened.logged_steps("eval_holdout_decision_samples") == {5, 15}
    series = {s.points[0].metrics.prefix: s for s in read_source(f"tensorboard:{run.parent}")}
    assert series["eval_holdout_"].steps == [5, 15] and all(p.backfilled for p in series["eval_holdout_"].points)
    assert series["eval_"].steps == [10, 20, 30]


def test_bad_input_and_defaults(tmp_path, monkeypatch):
    with pytest.raises(TokcalError, match="expected an existing TensorBoard run folder for run id 'nope'"):
        open_tracker("tensorboard", run_id="nope", local_dir=tmp_path / "tokcal")
    with pytest.raises(TokcalError, match="no tokcal evaluations in the TensorBoard folder"):
        read_source(f"tensorboard:{tmp_path}")
    # the Trainer's folder: TENSORBOARD_LOGGING_DIR first, else the newest run under <output_dir>/runs
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "events.out.tfevents.1.h").write_bytes(b"")
    assert open_tracker("tensorboard", local_dir=tmp_path / "tokcal").directory == (tmp_path / "runs" / "old").resolve()
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "elsewhere"))
    assert open_tracker("tensorboard", local_dir=tmp_path / "tokcal").directory == (tmp_path / "elsewhere").resolve()
    assert TrackingSettings().backends_for(["tensorboard"]) == ["tensorboard"]


@pytest.mark.slow  # trains a tiny model for real, then rescores its checkpoints
def test_trainer_run_then_backfill(tiny_bpe_checkpoint, tmp_path, capsys):
    from tokcal import DecisionTrackingCallback

    from tests.helpers.training import train_tiny

    out = tmp_path / "out"
    cb = DecisionTrackingCallback()  # backend "auto": follows report_to
    trainer = train_tiny(tiny_bpe_checkpoint, out, callbacks=[cb], max_steps=6, eval_steps=2, n_train=16, n_eval=9,
                         report_to=["tensorboard"])
    cb.close()
    (described,) = json.loads((out / "tokcal.json").read_text())["trackers"]
    assert described["backend"] == "tensorboard"
    (run,) = [d for d in (out / "runs").iterdir()]  # tokcal wrote into the Trainer's own run folder
    assert Path(described["logdir"]) == run.resolve()
    got = tb_scalars(events(run))
    assert sorted(got["eval/loss"]) == [2, 4, 6]  # the Trainer's own curve, beside tokcal's
    history = [h for h in trainer.state.log_history if "eval_decision_samples" in h]
    assert [h["step"] for h in history] == [2, 4, 6]
    n = 0
    for h in history:
        for key, value in h.items():
            if key.startswith("eval_") and key not in ("eval_loss",) and not key.startswith("eval_runtime") \
                    and "per_second" not in key and not np.isnan(value):
                assert got[tag_of(key)][h["step"]] == value, key  # every scalar, exactly
                n += 1
    assert n > 3 * 20
    for step in (2, 4, 6):
        assert (run / f"step_{step:06d}_eval_per_sample.json").is_file()

    # A backfill of the same checkpoints under another prefix goes into the sibling folder.
    assert main(["backfill", str(out), "--data", str(out / "eval.jsonl"), "--quiet",
                 "--metric-prefix", "eval_holdout_", "--output-dir", str(tmp_path / "o")]) == 0
    assert "3 logged, 0 skipped, 0 failed" in capsys.readouterr().out
    sibling = run.parent / f"{run.name}{BACKFILL_SUFFIX}"
    back = tb_scalars(events(sibling))
    assert sorted(back["eval/holdout_decision_ece"]) == [2, 4, 6]
    live = tb_scalars(events(run))  # nothing in the live folder was dropped or added
    assert {t: v for t, v in live.items()} == got
    # a second backfill under the live prefix finds every step in the run: nothing doubled
    assert main(["backfill", str(out), "--data", str(out / "eval.jsonl"), "--quiet",
                 "--output-dir", str(tmp_path / "o2")]) == 0
    assert "0 logged, 3 skipped, 0 failed" in capsys.readouterr().out
    series = {s.points[0].metrics.prefix: s for s in read_source(str(out))}
    assert series["eval_"].steps == [2, 4, 6] and series["eval_holdout_"].steps == [2, 4, 6]
    for p_live, p_back in zip(series["eval_"].points, series["eval_holdout_"].points):
        assert p_back.scalar("decision_accuracy") == p_live.scalar("decision_accuracy")
        assert isinstance(p_back.per_sample, PerSample)
