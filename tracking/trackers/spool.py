"""Never lose an evaluation: a wrapper that spools failed calls, and their replay.

:class:`SpoolingTracker` wraps a remote tracker. When its ``log_evaluation`` (or
``log_config``) raises for any reason (server down, network, quota), the payload is
written to the spool folder as one ``*.spool.json`` file, ONE warning is logged for the
whole run, and training goes on. :func:`sync_spool` (``tokcal sync``) replays the files
into the run later, skipping (metric, step) points the run already has, and deletes each
file only once its replay succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracking.core.metrics import DecisionMetrics
from tracking.errors import TokcalError
from tracking.trackers.base import (
    Tracker,
    backend_class,
    finite_scalars,
    redact,
    to_jsonable,
    write_atomic,
)

logger = logging.getLogger(__name__)

SPOOL_SUFFIX = ".spool.json"
SPOOL_VERSION = 1
# Where ``tokcal sync OUTPUT_DIR`` looks for a spool, in this order.
SPOOL_DIR_NAMES: tuple[str, ...] = ("tokcal-spool", "spool", "tokcal-runs/spool")
# Replay order: settings first, then evaluations by step, then ending the run.
_KIND_ORDER: dict[str, int] = {"config": 0, "evaluation": 1, "close": 2}


class SpoolingTracker(Tracker):
    """Wrap ``inner`` so that a failing call is spooled to ``spool_dir`` instead of raising.

    Invalid arguments (a negative step, not a ``DecisionMetrics``) still raise: they are
    bugs in the caller, not tracker failures.

    Example:
        >>> tracker = SpoolingTracker(MlflowTracker(tracking_uri=uri), "tokcal-spool")  # doctest: +SKIP
        >>> tracker.log_evaluation(metrics, step=120)  # server down: spooled, one warning  # doctest: +SKIP
    """

    def __init__(self, inner: Tracker, spool_dir: str | os.PathLike[str]) -> None:
        if not isinstance(inner, Tracker):
            raise TokcalError(f"expected inner to be a Tracker, got {type(inner).__name__}")
        self.inner = inner
        self.spool_dir = Path(spool_dir)
        self.name = inner.name
        self.spooled = 0
        self._warned = False

    @property
    def run_id(self) -> str | None:
        return self.inner.run_id

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        return self.inner.thread_safe

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "spool_dir": str(self.spool_dir.resolve())}

    def log_config(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        try:
            self.inner.log_config(config)
        except Exception as exc:  # deliberate: spool and warn, never stop training
            self._spool({"kind": "config", "step": 0, "config": to_jsonable(config)}, exc)

    def _write_evaluation(
        self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None, tags: dict[str, Any],
    ) -> None:
        try:
            self.inner.log_evaluation(metrics, step, samples=samples, tags=tags)
        except Exception as exc:  # deliberate: spool and warn, never stop training
            entry = {
                "kind": "evaluation",
                "step": step,
                "metrics": metrics.to_dict(),
                "samples": to_jsonable(samples),
                "tags": to_jsonable(tags),
            }
            self._spool(entry, exc)

    def logged_steps(self, key: str) -> set[int]:
        return self.inner.logged_steps(key)

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as exc:  # deliberate: the end of training must not fail on the tracker
            # Only a run this tracker started is ended on close; sync will end it.
            self._spool({"kind": "close", "step": 0}, exc)
        if self.spooled:
            logger.info("tokcal: %d call(s) to %s were kept in %s; replay them with: tokcal sync %s",
                        self.spooled, self.name, self.spool_dir, self.spool_dir)

    def _spool(self, entry: dict[str, Any], exc: BaseException) -> None:
        entry = {
            "version": SPOOL_VERSION,
            **entry,
            "target": self.inner.describe(),
            "error": _short(exc),
            "created": time.time(),
        }
        name = f"{int(entry['step']):09d}-{time.time_ns()}-{uuid.uuid4().hex[:8]}{SPOOL_SUFFIX}"
        try:
            data = json.dumps(entry, allow_nan=False, indent=1).encode("utf-8")
            write_atomic(self.spool_dir / name, data)
        except (OSError, ValueError, TypeError) as write_exc:
            # Both the tracker and the spool failed: this point is lost, say so loudly.
            logger.error("tokcal: could not log step %s to %s (%s) nor spool it to %s (%s)",
                         entry["step"], self.name, _short(exc), self.spool_dir, _short(write_exc))
            return
        self.spooled += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "tokcal: logging to %s run %s failed (%s); training goes on and this and later failed "
                "evaluations are kept in %s. Replay them with: tokcal sync %s  (shown once)",
                self.name, self.run_id, _short(exc), self.spool_dir, self.spool_dir,
            )
        else:
            logger.debug("tokcal: spooled step %s to %s (%s)", entry["step"], self.spool_dir, _short(exc))


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# ----------------------------------------------------------------------------- replay


@dataclass
class SyncResult:
    """What :func:`sync_spool` did."""

    spool_dir: Path
    replayed: int = 0  # entries pushed (wholly or partly)
    skipped: int = 0  # entries whose points were all in the run already
    points: int = 0  # scalar (metric, step) points written
    remaining: int = 0  # entries left in the spool
    targets: list[dict[str, Any]] = field(default_factory=list)


def find_spool_dir(path: str | os.PathLike[str]) -> Path:
    """The spool folder for ``path``: the folder itself when it holds ``*.spool.json``
    files, else a known spool sub-folder, else the ``spool_dir`` recorded in
    ``tokcal.json``."""
    p = Path(path)
    if not p.is_dir():
        raise TokcalError(f"expected a spool folder or an output folder, got {p} (not a folder)")
    if any(p.glob(f"*{SPOOL_SUFFIX}")):
        return p
    for name in SPOOL_DIR_NAMES:
        if (p / name).is_dir():
            return p / name
    meta = p / "tokcal.json"
    if meta.is_file():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TokcalError(f"{meta} is not valid JSON: {exc}") from exc
        tracker = info.get("tracker") if isinstance(info.get("tracker"), dict) else info
        spool_dir = tracker.get("spool_dir") if isinstance(tracker, dict) else None
        if spool_dir:
            return Path(spool_dir) if Path(spool_dir).is_absolute() else p / spool_dir
    return p  # an empty spool: nothing to do


def read_spool(spool_dir: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """The spooled entries, ordered by step then by when they were spooled."""
    entries: list[tuple[Path, dict[str, Any]]] = []
    for file in sorted(Path(spool_dir).glob(f"*{SPOOL_SUFFIX}")):
        try:
            entry = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TokcalError(f"{file}: expected a spool entry (JSON), got unreadable text ({exc})") from exc
        if entry.get("kind") not in _KIND_ORDER or "target" not in entry:
            raise TokcalError(f"{file}: expected a spool entry with 'kind' and 'target', got keys {sorted(entry)}")
        entries.append((file, entry))
    entries.sort(key=lambda fe: (_KIND_ORDER[fe[1]["kind"]], int(fe[1].get("step", 0)), fe[1].get("created", 0)))
    return entries


def sync_spool(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    run_id: str | None = None,
    **options: Any,
) -> SyncResult:
    """Replay a spool into its run(s); idempotent per (metric, step).

    Each entry goes to the run recorded with it, unless ``backend``/``run_id``/the
    backend's options (``tracking_uri``, ``project``, ``entity``) say otherwise. Scalars
    the run already has at that step are not logged again; an entry whose scalars are all
    there is dropped. Each file is deleted only after its replay succeeded; the first
    failure stops the replay with a :class:`TokcalError`.

    Example:
        >>> result = sync_spool("tokcal-runs/spool")  # doctest: +SKIP
        >>> result.replayed, result.skipped, result.remaining  # doctest: +SKIP
        (3, 0, 0)
    """
    from tracking.trackers import open_tracker

    spool_dir = find_spool_dir(path)
    result = SyncResult(spool_dir=spool_dir)
    entries = read_spool(spool_dir)
    overrides = {"run_id": run_id, **options}
    groups: dict[tuple[Any, ...], list[tuple[Path, dict[str, Any]]]] = {}
    opens: dict[tuple[Any, ...], dict[str, Any]] = {}
    for file, entry in entries:  # every target is resolved before anything is replayed
        name = backend or entry["target"].get("backend")
        try:
            kwargs = backend_class(name).reopen_kwargs(entry["target"], overrides, where="the spool")
        except TokcalError as exc:
            raise TokcalError(f"{file.name}: {exc}") from exc
        kwargs = {"backend": name, **{k: v for k, v in kwargs.items() if v is not None}}
        key = tuple(sorted(kwargs.items()))
        groups.setdefault(key, []).append((file, entry))
        opens[key] = kwargs
    for key, group in groups.items():
        tracker = open_tracker(spool=False, **opens[key])
        result.targets.append(tracker.describe())
        try:
            _replay(tracker, group, result)
        except Exception as exc:
            result.remaining = len(read_spool(spool_dir))
            raise TokcalError(
                f"replay into {tracker.name} run {tracker.run_id} failed with {result.remaining} of "
                f"{len(entries)} entries left ({_short(exc)}); they stay in {spool_dir}: run tokcal sync again"
            ) from exc
        finally:
            tracker.close()
    result.remaining = len(read_spool(spool_dir))
    return result


def _replay(tracker: Tracker, group: list[tuple[Path, dict[str, Any]]], result: SyncResult) -> None:
    """Replay one target's entries, deleting each file once it is in the run."""
    known: dict[str, set[int]] = {}
    for file, entry in group:
        if entry["kind"] in ("config", "close"):
            if entry["kind"] == "config":
                tracker.log_config(entry["config"])
            else:
                tracker.finish_run()
            file.unlink()
            result.replayed += 1
            continue
        step = int(entry["step"])
        metrics = DecisionMetrics.from_dict(entry["metrics"])
        scalars = finite_scalars(metrics)
        for k in scalars:
            if k not in known:
                known[k] = set(tracker.logged_steps(k))
        present = {k for k in scalars if step in known[k]}
        if scalars and present == set(scalars):
            result.skipped += 1
        else:
            if present:
                metrics.scalars = {k: v for k, v in metrics.scalars.items() if k not in present}
            tracker.log_evaluation(metrics, step, samples=entry.get("samples"), tags=entry.get("tags"))
            for k in scalars:
                if k not in present:
                    known[k].add(step)
                    result.points += 1
            result.replayed += 1
        file.unlink()
