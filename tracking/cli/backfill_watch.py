"""``tokcal backfill OUTPUT_DIR --watch``: the command-line side of :func:`tokcal.jobs.watch.watch`.

It waits for the training's ``tokcal.json`` when the run is not given (``--backend``),
opens the run(s) once, shows one status line while waiting (``--quiet``: none), prints a
line per checkpoint with the delay from its save to its point in the run, and stops
cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tokcal.errors import TokcalError


def check_watch_flags(args: argparse.Namespace) -> None:
    """The watch-only flags without ``--watch`` are a mistake: say so before any work."""
    given = [flag for flag, value in (("--until-step", args.until_step), ("--idle-timeout", args.idle_timeout))
             if value is not None]
    if given:
        raise TokcalError(f"{' and '.join(given)} apply to --watch; expected --watch too")


class StatusLine:
    """One line on a terminal, rewritten in place (on a pipe: a line each time it changes)."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream, self.enabled = stream if stream is not None else sys.stderr, enabled
        self._tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._shown = ""

    def __call__(self, text: str) -> None:
        if not self.enabled or text == self._shown:
            return
        if self._tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + text[:width].ljust(len(self._shown[:width])))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = text

    def clear(self) -> None:
        """Take the line away before other output."""
        if self.enabled and self._tty and self._shown:
            self.stream.write("\r" + " " * len(self._shown) + "\r")
            self.stream.flush()
        self._shown = ""


def run_watch(args: argparse.Namespace, source: Any, *, settings_for: Callable[..., Any],
              open_runs: Callable[..., list]) -> int:
    from tokcal.core.distributed import Dist
    from tokcal.jobs.state import STATE_FILE, read_state
    from tokcal.jobs.watch import deleted_message, watch

    _check(args)
    out = Path(args.paths[0])
    state_file = Path(args.state) if args.state else out / STATE_FILE
    status = StatusLine(enabled=not args.quiet)
    trackers: list = []
    try:
        if args.backend is None and not state_file.is_file():
            _wait_for(state_file, status, poll=args.poll, idle_timeout=args.idle_timeout)
        state = read_state(state_file) if state_file.is_file() else None
        settings = settings_for(args, state)
        trackers = open_runs(args, state, state_file if state else None, Dist())
        from tokcal.cli.common import engine_kwargs, load_kwargs

        def on_result(res: Any, delay: float | None) -> None:
            status.clear()
            after = f" ({delay:.1f} s after its save)" if delay is not None and res.status == "logged" else ""
            what = {"logged": "logged", "skipped": "skipped (already in the run)"}.get(res.status, f"FAILED: {res.error}")
            print(f"step {res.step:>8}  {res.path.name:<24} {what}{after}", flush=True)

        def on_deleted(path: Path) -> None:
            status.clear()
            print(f"tokcal backfill: {deleted_message(path)}", file=sys.stderr, flush=True)

        # The eval sets that tokcal.json records are those of its own runs (as without --watch).
        recorded_runs = {t.get("run_id") for t in (state or {}).get("trackers") or [] if isinstance(t, dict)}
        same_runs = bool(trackers) and all(t.run_id in recorded_runs for t in trackers)
        report = watch(
            out, source, trackers, settings, poll=args.poll, until_step=args.until_step,
            idle_timeout=args.idle_timeout, state_file=state_file, progress=not args.quiet, status=status,
            on_result=on_result, on_deleted=on_deleted, decisions_dir=args.output_dir, force=args.force,
            metric_prefix=args.metric_prefix, max_tokens=args.max_tokens,
            state=state_file if state is not None and same_runs else None, **engine_kwargs(args), **load_kwargs(args),
        )
    except KeyboardInterrupt:
        status.clear()
        print("tokcal backfill: stopped (Ctrl-C); the same command goes on from here (logged steps are skipped)",
              file=sys.stderr)
        return 130
    finally:
        for t in trackers:
            t.close()
    status.clear()
    counts = f"{len(report.results) - len(report.failed)} checkpoint(s) done, {len(report.failed)} failed"
    gone = f", {len(report.deleted)} deleted before scoring" if report.deleted else ""
    print(f"tokcal backfill --watch: {counts}{gone}; stopped: {report.ended_by}")
    if report.failed:
        print(f"tokcal backfill: {len(report.failed)} checkpoint(s) failed; fix them and run again "
              "(logged steps are skipped)", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> None:
    if len(args.paths) != 1:
        raise TokcalError(f"--watch takes one PATH, the training's output folder; got {len(args.paths)}")
    if any(c in args.paths[0] for c in "*?[") or Path(args.paths[0]).name.startswith("checkpoint-"):
        raise TokcalError(f"--watch takes the training's output folder (the one that holds checkpoint-N), "
                          f"got {args.paths[0]!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TokcalError("--watch runs in one process; expected no torchrun (pick a GPU with --device cuda:N)")
    if args.until_step is not None and args.until_step < 0:
        raise TokcalError(f"expected --until-step >= 0, got {args.until_step}")
    if args.idle_timeout is not None and not args.idle_timeout >= 0:
        raise TokcalError(f"expected --idle-timeout >= 0 seconds, got {args.idle_timeout}")
    if not args.poll > 0:
        raise TokcalError(f"expected --poll > 0 seconds, got {args.poll}")


def _wait_for(state_file: Path, status: StatusLine, *, poll: float, idle_timeout: float | None) -> None:
    """Wait for the training callback's ``tokcal.json`` (written when training begins)."""
    start = time.monotonic()
    while not state_file.is_file():
        if idle_timeout is not None and time.monotonic() - start >= idle_timeout:
            raise TokcalError(f"no {state_file} after {idle_timeout:g} s (--idle-timeout); expected a training "
                              "with the tokcal callback in that folder, or --backend and --run-id")
        status(f"waiting for {state_file} (written when training with the tokcal callback begins)")
        time.sleep(poll)
    status.clear()
