"""`tokcal sync` over damaged spool entries: every entry it cannot replay is set aside
(``*.spool.json.bad``, named with the reason) and the entries after it are replayed, never
a traceback. The entries are real: a local run whose store fails (its evaluations file
replaced by a folder) makes the spooling tracker keep them, then the store is repaired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokcal.cli.main import main
from tokcal.core.metrics import compute_metrics
from tokcal.core.per_sample import PerSample
from tokcal.trackers.local import EVALUATIONS_FILE, LocalTracker, read_local
from tokcal.trackers.spool import SpoolingTracker

LABELS = ["Accept", "Reject"]
STEPS = (2, 4, 6)


def _evaluation(seed: int):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=12)[:, :2]
    gt = rng.integers(0, 2, size=12)
    record = PerSample(LABELS, np.arange(12), gt, probs)
    return compute_metrics(probs, gt, LABELS), record


def make_spool(root: Path) -> tuple[Path, Path, dict[int, Path]]:
    """A local run and a spool holding its evaluations at STEPS; returns the store, the
    spool folder and step -> entry file."""
    store, spool = root / "store", root / "spool"
    tracker = LocalTracker(store)
    run_dir = store / tracker.run_id
    (run_dir / EVALUATIONS_FILE).mkdir()  # the store cannot be written: every evaluation is spooled
    spooling = SpoolingTracker(tracker, spool, retry_after_s=0.0)
    for step in STEPS:
        metrics, record = _evaluation(step)
        spooling.log_evaluation(metrics, step, per_sample=record, tags={"note": "spooled"})
    (run_dir / EVALUATIONS_FILE).rmdir()  # repaired: sync can write
    files = {json.loads(f.read_text())["step"]: f for f in spool.glob("*.spool.json")}
    assert sorted(files) == list(STEPS)
    return store, spool, files


def replayed_steps(store: Path) -> list[int]:
    return sorted(p.step for s in read_local(store) for p in s.points)


def _set(entry: dict, path: tuple, value) -> dict:
    node = entry
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return entry


_DELETE = object()
SCALAR = ("metrics", "scalars", "eval_decision_ece")

CASES = {
    "step null": (("step",), None),
    "step two": (("step",), "two"),
    "negative step": (("step",), -3),
    "fractional step": (("step",), 1.5),
    "missing metrics": (("metrics",), _DELETE),
    "missing scalars": (("metrics", "scalars"), _DELETE),
    "bad scalar": (SCALAR, "abc"),
    "boolean scalar": (SCALAR, True),
    "labels not a list": (("metrics", "labels"), "Accept"),
    "bins of the wrong length": (("metrics", "reliability", "counts"), [1, 2]),
    "bad per-sample record": (("per_sample",), {"format": "something else"}),
    "per-sample record cut short": (("per_sample", "p"), [0.5]),
    "samples not rows": (("samples",), [1, 2]),
    "target not an object": (("target",), "local"),
    "unknown backend": (("target", "backend"), "comet"),
    "unknown kind": (("kind",), "evaluate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_entry_that_cannot_be_replayed_is_set_aside_and_the_rest_replayed(case, tmp_path, capsys):
    store, spool, files = make_spool(tmp_path)
    bad = files[2]
    path, value = CASES[case]
    bad.write_text(json.dumps(_set(json.loads(bad.read_text()), path, value)))
    assert main(["sync", str(spool)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    (line,) = [x for x in out.err.splitlines() if "cannot be replayed" in x]
    assert f"{bad.name}.bad" in line, line
    assert replayed_steps(store) == [4, 6]  # the good entries after the bad one
    assert (spool / f"{bad.name}.bad").is_file() and not list(spool.glob("*.spool.json"))
    assert main(["sync", str(spool)]) == 0  # nothing blocks a later sync
    assert "nothing to sync" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["folder", "invalid JSON", "not an object"])
def test_unreadable_entries_are_set_aside(damage, tmp_path, capsys):
    store, spool, files = make_spool(tmp_path)
    name = "000000001-1-deadbeef.spool.json"
    if damage == "folder":
        (spool / name).mkdir()
    elif damage == "invalid JSON":
        (spool / name).write_text(files[2].read_text()[:100])
    else:
        (spool / name).write_text("[1, 2]")
    assert main(["sync", str(spool)]) == 1
    err = capsys.readouterr().err
    assert f"{name}.bad" in err and "Traceback" not in err
    assert replayed_steps(store) == list(STEPS)
    assert (spool / f"{name}.bad").exists()


def test_a_good_spool_still_replays_every_entry(tmp_path, capsys):
    store, spool, _ = make_spool(tmp_path)
    assert main(["sync", str(spool)]) == 0
    assert replayed_steps(store) == list(STEPS)
    assert not list(spool.glob("*.bad"))


# ------------------------------------------------------------- any JSON value in any field

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
FIELDS = [("step",), ("kind",), ("target",), ("target", "backend"), ("target", "run_id"), ("target", "local_dir"),
          ("metrics",), ("metrics", "labels"), ("metrics", "prefix"), ("metrics", "scalars"), SCALAR,
          ("metrics", "reliability"), ("metrics", "reliability", "edges"), ("metrics", "positive_reliability"),
          ("metrics", "histograms"), ("metrics", "notes"), ("metrics", "risk_coverage"), ("per_sample",),
          ("per_sample", "labels"), ("per_sample", "gt"), ("per_sample", "n"), ("samples",), ("tags",),
          ("created",), ("version",), ("scalars",)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_spool(tmp_path_factory.mktemp("pristine"))[0].parent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=_json)
@example(field=("metrics", "histograms"), value={"\r": None})  # a key with a line break: the message stays one line
def test_any_value_in_any_field_never_gives_a_traceback(pristine, tmp_path_factory, capsys, field, value):
    """A value of any JSON type in any field of one entry: a clean exit (0, 1 with the entry
    set aside and named, or 2 with a one-line error for a run that cannot be opened),
    never a traceback, and the good entries after it are replayed."""
    import os
    import shutil

    root = tmp_path_factory.mktemp("h")
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    store, spool = root / "store", root / "spool"
    (run_dir,) = [p for p in store.iterdir() if p.is_dir()]
    files = {}
    for f in spool.glob("*.spool.json"):  # the copy's entries name the copy's run
        entry = json.loads(f.read_text())
        entry["target"]["local_dir"] = str(run_dir)
        f.write_text(json.dumps(entry))
        files[entry["step"]] = f
    bad = files[2]
    bad.write_text(json.dumps(_set(json.loads(bad.read_text()), field, value)))
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(root)  # a target without a folder opens a new local run in the working folder
    try:
        code = main(["sync", str(spool)])  # a traceback would raise here
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    assert code in (0, 1, 2), out.err
    assert "Traceback" not in out.err
    assert len(out.err.strip().splitlines()) <= 1, out.err
    assert {4, 6} <= set(replayed_steps(store))  # the good entries after the bad one are in
    if code == 1:
        assert f"{bad.name}.bad" in out.err
