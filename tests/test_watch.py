"""``tokcal backfill --watch``: checkpoints scored as training saves them, into the training's run.

Real components only: checkpoints saved by a real tiny training (or copied from one, slowly,
by a real subprocess in the Trainer's order of files), the real local and TensorBoard
stores read back, the watcher as a real ``tokcal`` subprocess for the end-to-end runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tokcal.cli.main import main
from tokcal.core.spec import DecisionSpec
from tokcal.data.synthetic import review_records
from tokcal.errors import TokcalError
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.settings import TrackingSettings
from tokcal.jobs.state import STATE_FILE, record_training_end, write_state
from tokcal.jobs.watch import CheckpointWatcher, has_trainer_state, watch
from tokcal.trackers import open_tracker
from tokcal.trackers.local import read_local

from tests.helpers.training import train_tiny, write_records

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def saved(tiny_bpe_checkpoint, tmp_path_factory):
    """A real training's output folder: checkpoint-2 and checkpoint-4 as the Trainer saved them."""
    out = tmp_path_factory.mktemp("trained") / "out"
    train_tiny(tiny_bpe_checkpoint, out, max_steps=4, eval_steps=2, n_train=16, n_eval=9, eval_strategy="no")
    return out


def save_as(src: Path, dst: Path, step: int) -> None:
    """A copy of a saved checkpoint as the checkpoint of another step (its trainer_state.json says so)."""
    shutil.copytree(src, dst)
    state = json.loads((dst / "trainer_state.json").read_text())
    (dst / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))


def own_scores(checkpoint: Path, data: Path):
    return score_checkpoint(checkpoint, data, DecisionSpec(), progress=False).metrics()


def local_run(tmp_path: Path):
    tracker = open_tracker("local", local_dir=tmp_path / "store")
    return tracker, tracker.directory


def test_watcher_completeness_rules(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    w = CheckpointWatcher(out)
    ck = out / "checkpoint-2"
    shutil.copytree(saved / "checkpoint-2", ck)
    state = (ck / "trainer_state.json").read_bytes()
    (ck / "trainer_state.json").write_bytes(state[: len(state) // 2])  # the Trainer writes it without a rename
    assert not has_trainer_state(ck)
    assert w.poll() == ([], []) and w.poll() == ([], [])  # half-written: never complete, however still
    (ck / "trainer_state.json").write_bytes(state)
    assert w.poll() == ([], [])  # first look at the whole file: not yet known to have stopped changing
    assert w.poll() == ([(ck, 2)], [])
    assert w.poll() == ([], [])  # handed out once
    # a folder without trainer_state.json: complete once a later one is
    shutil.copytree(saved / "checkpoint-2", out / "checkpoint-1", ignore=shutil.ignore_patterns("trainer_state.json"))
    shutil.copytree(saved / "checkpoint-4", out / "checkpoint-4")
    assert w.poll() == ([], [])
    assert w.poll() == ([(out / "checkpoint-1", 1), (out / "checkpoint-4", 4)], [])
    # seen while being written, then removed by rotation: reported once
    shutil.copytree(saved / "checkpoint-4", out / "checkpoint-6", ignore=shutil.ignore_patterns("trainer_state.json"))
    assert w.poll() == ([], []) and w.pending == ["checkpoint-6"]
    shutil.rmtree(out / "checkpoint-6")
    assert w.poll() == ([], [out / "checkpoint-6"])
    assert w.poll() == ([], []) and w.pending == []


def test_slow_save_is_scored_only_when_complete(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    data = saved / "eval.jsonl"
    tracker, run_dir = local_run(tmp_path)
    copier = subprocess.Popen([sys.executable, "-m", "tests.scripts.slow_save", str(saved / "checkpoint-4"),
                               str(out / "checkpoint-4"), "0.15"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              text=True)
    began: dict[str, float] = {}

    def status(text: str) -> None:
        if text.startswith("scoring"):
            began[text.split()[1]] = time.time()

    report = watch(out, data, tracker, poll=0.1, until_step=4, progress=False, status=status)
    copier.wait(timeout=120)
    finished = {r["file"]: r["done"] for r in map(json.loads, copier.stdout.read().splitlines())}
    assert copier.returncode == 0 and list(finished)[-1] == "trainer_state.json"
    assert began["checkpoint-4"] > finished["trainer_state.json"]  # never loaded half-written
    assert [r.step for r in report.results] == [4] and report.results[0].status == "logged"
    assert report.ended_by.startswith("reached step 4")
    (series,) = read_local(run_dir)
    want = own_scores(saved / "checkpoint-4", data)
    got = series.points[0].metrics.scalars
    for key, value in want.scalars.items():
        if not np.isnan(value):
            assert got[key] == pytest.approx(value, rel=1e-9), key
    assert series.points[0].backfilled and series.points[0].per_sample is not None
    assert 0 < report.delays[4] < 60


def test_rotation_and_flips(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for s in (2, 4):
        shutil.copytree(saved / f"checkpoint-{s}", out / f"checkpoint-{s}")
    (out / "checkpoint-3").mkdir()  # seen, then deleted before its save completed
    tracker, run_dir = local_run(tmp_path)
    told: list[Path] = []

    def status(text: str) -> None:
        if text.startswith("scoring checkpoint-2"):  # rotation removes checkpoint-4 and 3 while 2 is scored...
            shutil.rmtree(out / "checkpoint-4")
            shutil.rmtree(out / "checkpoint-3")
            save_as(saved / "checkpoint-4", out / "checkpoint-6", 6)  # ... and training saves on

    report = watch(out, saved / "eval.jsonl", tracker, poll=0.1, until_step=6, progress=False, status=status,
                   on_deleted=told.append)
    assert sorted(p.name for p in told) == ["checkpoint-3", "checkpoint-4"]  # once each
    assert [(r.step, r.status) for r in report.results] == [(2, "logged"), (6, "logged")]
    (series,) = read_local(run_dir)
    assert series.steps == [2, 6]
    # the flips at step 6 are those since step 2 (the previous point), counted independently
    a, b = (p.per_sample for p in series.points)
    np.testing.assert_array_equal(a.keys, b.keys)
    to_wrong = int(np.sum(a.correct & ~b.correct))
    to_right = int(np.sum(~a.correct & b.correct))
    assert series.points[1].scalar("decision_flips_to_wrong") == to_wrong
    assert series.points[1].scalar("decision_flips_to_right") == to_right
    assert np.isnan(series.points[0].scalar("decision_flips_to_wrong"))


def test_end_signals(saved, tmp_path):
    data = saved / "eval.jsonl"
    # the callback's record in tokcal.json: what is there is scored first, then it stops
    out = tmp_path / "a"
    shutil.copytree(saved / "checkpoint-2", out / "checkpoint-2")
    write_state(out, [], TrackingSettings())
    record_training_end(out / STATE_FILE)
    tracker, _ = local_run(tmp_path / "a-store")
    report = watch(out, data, tracker, poll=0.05, progress=False)
    assert report.ended_by == "training ended (tokcal.json)" and [r.step for r in report.results] == [2]
    # the Trainer's final trainer_state.json in the output folder
    out = tmp_path / "b"
    out.mkdir()
    shutil.copy(saved / "checkpoint-4" / "trainer_state.json", out / "trainer_state.json")
    report = watch(out, data, tracker, poll=0.05, progress=False)
    assert report.ended_by.startswith("training ended (the final trainer_state.json") and report.results == []
    # ... but not an earlier training's: one older than the new training's tokcal.json
    os.utime(out / "trainer_state.json", (time.time() - 60, time.time() - 60))
    write_state(out, [], TrackingSettings())
    report = watch(out, data, tracker, poll=0.05, idle_timeout=0.2, progress=False)
    assert report.ended_by.startswith("no new checkpoint for 0.2 s")
    # no new checkpoint for a while
    t0 = time.monotonic()
    report = watch(tmp_path / "c-not-yet", data, tracker, poll=0.05, idle_timeout=0.3, progress=False)
    assert report.ended_by == "no new checkpoint for 0.3 s (--idle-timeout)" and 0.3 <= time.monotonic() - t0 < 10
    # bad input: one line, before anything is scored
    with pytest.raises(TokcalError, match="expected poll to be a number of seconds >= 0.01, got 0"):
        watch(out, data, tracker, poll=0)
    with pytest.raises(TokcalError, match="expected until_step to be an integer >= 0, got -1"):
        watch(out, data, tracker, until_step=-1)


def test_cli_flags(saved, tmp_path, capsys):
    data = str(saved / "eval.jsonl")
    for argv, message in (
        ([str(saved), "--until-step", "4"], "--until-step apply to --watch; expected --watch too"),
        ([str(saved), str(tmp_path), "--watch"], "--watch takes one PATH, the training's output folder; got 2"),
        ([str(saved / "checkpoint-2"), "--watch"], "--watch takes the training's output folder"),
        ([str(saved), "--watch", "--poll", "0"], "expected --poll > 0 seconds, got 0.0"),
    ):
        assert main(["backfill", *argv, "--data", data]) == 2
        assert message in capsys.readouterr().err
    # no tokcal.json and no --backend: it waits for the callback's, here no longer than --idle-timeout
    assert main(["backfill", str(tmp_path / "nothing"), "--data", data, "--watch", "--quiet", "--poll", "0.05",
                 "--idle-timeout", "0.2"]) == 2
    assert "no " in capsys.readouterr().err


@pytest.mark.slow  # a real training in one process, the watcher in another
@pytest.mark.parametrize(("backend", "eval_strategy"), [("local", "no"), ("tensorboard", "no"), ("local", "steps")])
def test_training_and_watcher_in_two_processes(tiny_bpe_checkpoint, tmp_path, backend, eval_strategy):
    if backend == "tensorboard":
        pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    data = write_records(tmp_path / "eval.jsonl", review_records(9, seed=100))  # what train_tiny evaluates on
    watcher = subprocess.Popen([sys.executable, "-m", "tokcal", "backfill", str(out), "--data", str(data),
                                "--watch", "--poll", "0.2", "--quiet", "--output-dir", str(tmp_path / "decisions")],
                               cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    extra = ["report_to=tensorboard"] if backend == "tensorboard" else []
    train = subprocess.run([sys.executable, "-m", "tests.scripts.train_saving", str(tiny_bpe_checkpoint), str(out),
                            str(tmp_path / "eval_train.jsonl"), backend, eval_strategy, *extra],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600, check=False)
    assert train.returncode == 0, train.stderr[-3000:]
    try:
        stdout, stderr = watcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(watcher.pid, signal.SIGKILL)
        pytest.fail(f"the watcher did not stop after training ended: {watcher.communicate()[1][-3000:]}")
    assert watcher.returncode == 0, stderr[-3000:]
    assert "stopped: training ended (tokcal.json)" in stdout
    assert [line.split()[1] for line in stdout.splitlines() if line.startswith("step")] == ["2", "4", "6"]
    from tokcal.jobs.report import read_source

    (series,) = read_source(str(out))  # the run tokcal.json names
    assert series.steps == [2, 4, 6]
    if eval_strategy == "steps":  # the callback logged every step live; the watcher added nothing
        assert stdout.count("skipped (already in the run)") == 3 and not any(p.backfilled for p in series.points)
        from tokcal.trackers.local import read_local_store

        (run_dir,) = [d for d in (out / "tokcal").iterdir() if d.is_dir()]
        assert sorted(int(r["step"]) for r in read_local_store(run_dir)) == [2, 4, 6]  # one point per step
        return
    delays = [float(line.split("(")[1].split()[0]) for line in stdout.splitlines() if "after its save" in line]
    assert len(delays) == 3 and all(0 < d < 120 for d in delays)
    assert all(p.backfilled for p in series.points)  # one point per checkpoint, all from the watcher
    for p in series.points:
        want = own_scores(out / f"checkpoint-{p.step}", data)
        for key in ("eval_decision_accuracy", "eval_decision_ece", "eval_decision_prob_mass"):
            assert p.metrics.scalars[key] == pytest.approx(want.scalars[key], rel=1e-6), (p.step, key)
    # a restart goes on where it stopped: every step is in the run, nothing is doubled
    assert main(["backfill", str(out), "--data", str(data), "--watch", "--quiet", "--poll", "0.05",
                 "--output-dir", str(tmp_path / "decisions")]) == 0
    (again,) = read_source(str(out))
    assert again.steps == [2, 4, 6]
    if backend == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        (live,) = [d for d in (out / "runs").iterdir() if not d.name.endswith("_tokcal_backfill")]
        acc = EventAccumulator(str(live.parent / f"{live.name}_tokcal_backfill"), size_guidance={"tensors": 0})
        acc.Reload()
        assert [e.step for e in acc.Tensors("eval/decision_ece")] == [2, 4, 6]


@pytest.mark.slow  # a real tokcal subprocess stopped with Ctrl-C while it waits
def test_ctrl_c_stops_cleanly(saved, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(saved / "checkpoint-2", out / "checkpoint-2")
    tracker, run_dir = local_run(tmp_path)
    tracker.close()
    cmd = [sys.executable, "-m", "tokcal", "backfill", str(out), "--data", str(saved / "eval.jsonl"), "--watch",
           "--poll", "0.1", "--backend", "local", "--local-dir", str(run_dir.parent), "--run-id", run_dir.name,
           "--output-dir", str(tmp_path / "d")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not read_local_steps(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # waiting for the next checkpoint now
    from tokcal.io import exclusive_lock

    with exclusive_lock(run_dir / ".tokcal-writer.lock", "local run"):  # not held while waiting: free to take
        pass
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped (Ctrl-C)" in stderr and "Traceback" not in stderr
    assert "waiting for the next checkpoint-N; last step scored: 2" in stderr  # the status line
    assert read_local_steps(run_dir) == [2]


def read_local_steps(run_dir: Path) -> list[int]:
    from tokcal.trackers.local import read_local_store

    return [int(r["step"]) for r in read_local_store(run_dir)]


def test_a_busy_run_is_tried_again(saved, tmp_path):
    """Another writer (``tokcal sync``, a backfill) holds the run's lock when a checkpoint is
    ready: the watcher says so, waits, and scores it once the lock is free."""
    from contextlib import ExitStack

    from tokcal.io import exclusive_lock

    out = tmp_path / "out"
    shutil.copytree(saved / "checkpoint-2", out / "checkpoint-2")
    tracker, run_dir = local_run(tmp_path)
    held = ExitStack()
    held.enter_context(exclusive_lock(tracker.writer_lock(), "local run"))
    lines: list[str] = []

    def status(text: str) -> None:
        lines.append(text)
        if "being written by another tokcal process" in text:
            held.close()  # the other writer is done

    report = watch(out, saved / "eval.jsonl", tracker, poll=0.05, until_step=2, progress=False, status=status)
    assert any("checkpoint-2: the run is being written by another tokcal process" in x for x in lines)
    assert [(r.step, r.status) for r in report.results] == [(2, "logged")]
    assert read_local_steps(run_dir) == [2]
