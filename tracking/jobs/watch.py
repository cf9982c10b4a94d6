"""Watch a training output folder and backfill each ``checkpoint-N`` as soon as its save is complete.

``tokcal backfill OUTPUT_DIR --watch`` runs this: it scores what is there, then keeps
looking for new checkpoint folders and logs each one into the run at step N with
:func:`~tokcal.jobs.backfill.backfill` (one checkpoint per call, so each run's writer lock
is held only while that checkpoint is scored and written, never while waiting). The
tokenised eval set and the decisions of the previous checkpoint are kept between calls, so
every point after the first carries the flips since the one before.

When is a checkpoint complete? The Trainer (transformers 5.x, ``Trainer._save_checkpoint``)
writes straight into ``checkpoint-N`` (no temporary folder): the model, tokenizer and
``training_args.bin``, then the optimizer, scheduler and RNG states, and
``trainer_state.json`` last, then it rotates old checkpoints (``save_total_limit``).
A checkpoint counts as complete when its ``trainer_state.json`` reads as JSON with a
``global_step`` and no file in the folder changed (names, sizes, modification times)
between two looks one poll apart. A folder without ``trainer_state.json`` (a save made
some other way) counts once a later checkpoint is complete, or training has ended, and its
files have stopped changing.

The watch ends by itself when training is over: the training callback records the end in
``tokcal.json`` (``training_ended_at``), or the Trainer's final ``trainer_state.json``
appears in the output folder (``Trainer.save_state``, which LLaMA-Factory calls); or after
the checkpoint of ``until_step``; or after ``idle_timeout`` seconds without a new
checkpoint. Every checkpoint that is complete by then is scored first. A final
``trainer_state.json`` older than ``tokcal.json`` is an earlier training's and does not count.
A training that crashes records no end: ``idle_timeout`` or Ctrl-C stops the watch then.

Example:
    >>> report = watch("out", "eval.jsonl", trackers, until_step=1000)  # doctest: +SKIP
    >>> report.ended_by  # doctest: +SKIP
    'training ended (tokcal.json)'
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokcal.core.trajectories import TrajectoryState
from tokcal.data.sources import EvalSource, as_source
from tokcal.errors import TokcalError
from tokcal.jobs.backfill import (
    BackfillReport,
    CheckpointResult,
    ExampleCache,
    backfill,
)
from tokcal.jobs.settings import TrackingSettings
from tokcal.jobs.state import STATE_FILE, training_ended

COMPLETE_FILE = "trainer_state.json"  # the last file the Trainer writes into checkpoint-N
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's PREFIX_CHECKPOINT_DIR-<global step>

Snapshot = tuple[tuple[str, int, int], ...]
BUSY = "is being written by another tokcal process"  # tokcal.io.exclusive_lock's message


def snapshot(folder: Path) -> Snapshot | None:
    """Every file under ``folder`` as (relative path, size, mtime in ns), sorted; ``None``
    when the folder is gone (deleted meanwhile)."""
    out: list[tuple[str, int, int]] = []
    try:
        for root, _dirs, files in os.walk(folder, onerror=_raise):
            for name in files:
                st = os.stat(os.path.join(root, name))
                out.append((os.path.relpath(os.path.join(root, name), folder), st.st_size, st.st_mtime_ns))
    except FileNotFoundError:
        return None
    if not folder.is_dir():
        return None
    return tuple(sorted(out))


def _raise(exc: OSError) -> None:
    raise exc


def has_trainer_state(folder: Path) -> bool:
    """``trainer_state.json`` is there and whole (the Trainer writes it without a rename, so
    a half-written one is possible: it does not parse)."""
    try:
        data = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or still being written: not complete yet
        return False
    return isinstance(data, dict) and "global_step" in data


@dataclass
class _Seen:
    path: Path
    step: int
    first_seen: float
    last: Snapshot | None = None
    done: bool = False


class CheckpointWatcher:
    """Finds the ``checkpoint-N`` folders of an output folder whose save is complete.

    Each :meth:`poll` looks once; a checkpoint is handed out once, in step order.

    Example:
        >>> import tempfile
        >>> w = CheckpointWatcher(tempfile.mkdtemp())
        >>> w.poll()
        ([], [])
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self._seen: dict[str, _Seen] = {}
        self.last_new: float = time.monotonic()  # when a checkpoint folder last appeared

    def poll(self, *, training_over: bool = False) -> tuple[list[tuple[Path, int]], list[Path]]:
        """One look: the checkpoints that became complete since the last look, in step order,
        and the ones seen before that were deleted before they were handed out."""
        now = time.monotonic()
        present = {}
        if self.output_dir.is_dir():
            for p in self.output_dir.iterdir():
                m = _CHECKPOINT.match(p.name)
                if m and p.is_dir():
                    present[p.name] = (p, int(m.group(1)))
        for name, (p, step) in present.items():
            if name not in self._seen:
                self._seen[name] = _Seen(p, step, now)
                self.last_new = now
        gone = [s.path for name, s in self._seen.items() if not s.done and name not in present]
        for path in gone:
            self._seen[path.name].done = True
        ready: list[_Seen] = []
        stable: dict[str, bool] = {}
        for name, s in sorted(self._seen.items(), key=lambda kv: kv[1].step):
            if s.done:
                continue
            snap = snapshot(s.path)
            stable[name] = snap is not None and bool(snap) and snap == s.last
            s.last = snap
        complete = {name for name, ok in stable.items() if ok and has_trainer_state(self._seen[name].path)}
        newest_complete = max((self._seen[n].step for n in complete), default=None)
        for name, ok in stable.items():
            s = self._seen[name]
            later = newest_complete is not None and newest_complete > s.step
            if name in complete or (ok and (later or training_over)):
                ready.append(s)
        for s in ready:
            s.done = True
        return [(s.path, s.step) for s in sorted(ready, key=lambda s: s.step)], gone

    def retry(self, path: Path) -> None:
        """Hand ``path`` out again once it is seen complete again (its run was busy)."""
        seen = self._seen.get(path.name)
        if seen is not None:
            seen.done, seen.last = False, None

    @property
    def pending(self) -> list[str]:
        """Checkpoint folders seen but not complete yet (being written)."""
        return [name for name, s in sorted(self._seen.items(), key=lambda kv: kv[1].step) if not s.done]


@dataclass
class WatchReport:
    """Every checkpoint the watch handled, in the order it did, and why it stopped."""

    results: list[CheckpointResult] = field(default_factory=list)
    deleted: list[Path] = field(default_factory=list)
    ended_by: str = ""
    delays: dict[int, float] = field(default_factory=dict)  # step -> seconds from its save to its point
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckpointResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> str:
        as_backfill = BackfillReport(self.results, self.targets).summary()
        gone = f", {len(self.deleted)} deleted before scoring" if self.deleted else ""
        return f"{as_backfill}{gone}; stopped: {self.ended_by}"


def watch(
    output_dir: str | os.PathLike[str],
    data: EvalSource | str | os.PathLike[str],
    trackers: Any,
    settings: TrackingSettings | None = None,
    *,
    poll: float = 2.0,
    until_step: int | None = None,
    idle_timeout: float | None = None,
    state_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
    status: Callable[[str], None] | None = None,
    on_result: Callable[[CheckpointResult, float | None], None] | None = None,
    on_deleted: Callable[[Path], None] | None = None,
    chat_template: str | None = None,
    max_samples: int | None = None,
    **backfill_kw: Any,
) -> WatchReport:
    """Backfill every checkpoint of ``output_dir`` now and as training saves new ones.

    Args:
        output_dir: the Trainer's ``output_dir`` (it may not exist yet).
        data, trackers, settings: as for :func:`~tokcal.jobs.backfill.backfill`.
        poll: seconds between two looks at the folder.
        until_step: stop after the checkpoint of this step (or the first one past it).
        idle_timeout: stop when no new checkpoint folder appeared for this many seconds.
        state_file: the ``tokcal.json`` whose ``training_ended_at`` ends the watch
            (default: the one in ``output_dir``).
        progress: progress bars while scoring.
        status: called with one line while waiting (what it waits for, the last step scored).
        on_result: called with each checkpoint's result and the seconds from its save
            (``trainer_state.json`` written) to its point in the run.
        on_deleted: called once for each checkpoint deleted before it could be scored
            (``save_total_limit`` rotation); default: a warning.
        **backfill_kw: the rest of :func:`~tokcal.jobs.backfill.backfill`'s options
            (``output_dir`` of the per-decision files as ``decisions_dir``, ``metric_prefix``,
            ``force``, ``device`` ...).

    Returns:
        A :class:`WatchReport`. ``KeyboardInterrupt`` (Ctrl-C) is raised as it is, between
        or during checkpoints; steps logged so far stay, and a new watch skips them.

    Raises:
        TokcalError: before anything is scored, for bad options or a bad eval set.
    """
    _check(poll, "poll", minimum=0.01)
    if until_step is not None and (isinstance(until_step, bool) or not isinstance(until_step, int) or until_step < 0):
        raise TokcalError(f"expected until_step to be an integer >= 0, got {until_step!r}")
    if idle_timeout is not None:
        _check(idle_timeout, "idle_timeout", minimum=0.0)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise TokcalError(f"expected the training output folder, got a file: {out}")
    source = as_source(data, chat_template=chat_template, max_samples=max_samples)
    source.check()
    settings = settings or TrackingSettings()
    trackers = list(trackers) if isinstance(trackers, (list, tuple)) else [trackers]
    state_path = Path(state_file) if state_file else out / STATE_FILE
    decisions_dir = backfill_kw.pop("decisions_dir", None)
    prefix = backfill_kw.get("metric_prefix", "eval_")
    cache = ExampleCache(source, progress=progress)
    history = TrajectoryState()
    watcher = CheckpointWatcher(out)
    _warm_up()
    report = WatchReport(targets=[t.describe() for t in trackers])
    last_step: int | None = None
    done_until = False  # the checkpoint of until_step (or one past it) was handed out
    retrying: set[Path] = set()  # checkpoints whose run was busy: handed out again later
    say = status or (lambda text: None)
    tell = on_deleted or (lambda path: warnings.warn(deleted_message(path), stacklevel=3))
    while True:
        over = _training_over(out, state_path)
        ready, gone = watcher.poll(training_over=over is not None)
        for path in gone:
            retrying.discard(path)
            report.deleted.append(path)
            tell(path)
        for path, step in ready:
            if until_step is not None and step >= until_step:
                done_until = True
                if step > until_step:
                    continue  # past the last step asked for
            saved_at = _saved_at(path)
            if not backfill_kw.get("force") and logged_by_callback(path, step, prefix):
                res = CheckpointResult(path, step, "skipped")  # the live callback's point, maybe not written yet
                report.results.append(res)
                last_step = step
                if on_result is not None:
                    on_result(res, None)
                continue
            say(f"scoring {path.name} (step {step})")
            try:
                one = backfill([path], source, trackers, settings, output_dir=decisions_dir, progress=progress,
                               cache=cache, history=history, **backfill_kw) if path.is_dir() else None
            except TokcalError as exc:
                if not path.is_dir():
                    one = None  # gone between the look and the load
                elif BUSY in str(exc):  # another writer (tokcal sync, a backfill) has the run now
                    say(f"{path.name}: the run is being written by another tokcal process; trying again")
                    watcher.retry(path)
                    retrying.add(path)
                    continue
                else:
                    raise
            retrying.discard(path)
            res = one.results[0] if one is not None else None
            if res is None or (res.status == "failed" and not path.is_dir()):
                report.deleted.append(path)  # rotation removed it before or while it was scored
                tell(path)
                continue
            delay = time.time() - saved_at if saved_at is not None else None
            if delay is not None and res.status == "logged":
                report.delays[step] = delay
            report.results.append(res)
            if res.status != "failed":
                last_step = step
            if on_result is not None:
                on_result(res, delay)
        if done_until and not retrying:
            report.ended_by = f"reached step {until_step} (--until-step)"
            break
        if over is not None and not watcher.pending:
            report.ended_by = over
            break
        idle = time.monotonic() - watcher.last_new
        if idle_timeout is not None and idle >= idle_timeout and not watcher.pending:
            report.ended_by = f"no new checkpoint for {idle_timeout:g} s (--idle-timeout)"
            break
        waiting = f"{', '.join(watcher.pending)} to be complete" if watcher.pending else "the next checkpoint-N"
        scored = f"last step scored: {last_step}" if last_step is not None else "no step scored yet"
        say(f"watching {out}: waiting for {waiting}; {scored}")
        time.sleep(poll)
    return report


def logged_by_callback(checkpoint: Path, step: int, prefix: str = "eval_") -> bool:
    """Whether the training callback evaluated this checkpoint's step under ``prefix``: its
    ``trainer_state.json`` holds the callback's entry for that step (the callback adds one to
    the Trainer's log history when it logs, before the Trainer saves). The callback writes that
    point itself, possibly still in its background thread, so the watcher must not add one.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / COMPLETE_FILE).write_text('{"global_step": 4, "log_history": '
        ...                                         '[{"eval_decision_samples": 9, "step": 4}]}')
        >>> logged_by_callback(folder, 4), logged_by_callback(folder, 4, "eval_holdout_")
        (True, False)
    """
    try:
        data = json.loads((checkpoint / COMPLETE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no (whole) trainer state: nothing says the callback logged it
        return False
    history = data.get("log_history") if isinstance(data, dict) else None
    key = f"{prefix}decision_samples"
    return any(isinstance(e, dict) and e.get("step") == step and key in e for e in history or [])


def _warm_up() -> None:
    """Import the model loading, scoring and plotting code now, while nothing is saved yet,
    so that the first checkpoint is not slower to reach the run than the others."""
    import tokcal.core.plots
    import tokcal.jobs.extract  # noqa: F401
    import transformers

    _ = transformers.AutoModelForCausalLM, transformers.AutoTokenizer


def _check(value: Any, name: str, *, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise TokcalError(f"expected {name} to be a number of seconds >= {minimum:g}, got {value!r}")


def _training_over(out: Path, state_path: Path) -> str | None:
    """Why training is over, or ``None``: the callback's record in ``tokcal.json``, or the
    Trainer's final ``trainer_state.json`` in the output folder."""
    began = None
    if state_path.is_file():
        try:
            began = state_path.stat().st_mtime
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being replaced right now: look again at the next poll
            state = None
        if isinstance(state, dict) and training_ended(state) is not None:
            return f"training ended ({state_path.name})"
    final = out / COMPLETE_FILE
    if has_trainer_state(out) and (began is None or final.stat().st_mtime >= began):  # not an earlier training's
        return f"training ended (the final {COMPLETE_FILE} in {out.name})"
    return None


def _saved_at(path: Path) -> float | None:
    try:
        return (path / COMPLETE_FILE).stat().st_mtime
    except OSError:  # no trainer_state.json: the newest file's time then
        snap = snapshot(path)
        return max((t for _, _, t in snap), default=0) / 1e9 if snap else None


def deleted_message(path: Path) -> str:
    """The one line said for a checkpoint that rotation removed before it was scored."""
    return f"{path.name} was deleted before it could be scored"


__all__ = ["COMPLETE_FILE", "CheckpointWatcher", "WatchReport", "deleted_message", "has_trainer_state", "logged_by_callback", "snapshot", "watch"]
