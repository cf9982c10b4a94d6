"""Never lose an evaluation: a wrapper that spools failed calls, and their replay.

:class:`SpoolingTracker` wraps a remote tracker. When its ``log_evaluation`` (or
``log_config``, ``close``) raises for any reason (server down, network, quota), the
payload is written to the spool folder as one ``*.spool.json`` file, ONE warning is
logged for the whole run, and training goes on. After a failure the server is left
alone for :data:`RETRY_AFTER_S` seconds (calls in that time go straight to the spool),
so an outage costs one bounded attempt, not one per evaluation.

When the server does not answer when the run is to be opened
(:class:`~tokcal.trackers.base.TrackerUnreachable`), :meth:`SpoolingTracker.unopened`
stands in for the run: a ``create`` entry records how to create it, and every later call
is spooled against a ``pending`` id.

:func:`sync_spool` (``tokcal sync``) replays the files later: first it creates the
pending runs (and records each new run id in its ``create`` entry, so a second sync
attaches instead of creating again), then settings, evaluations by step and the runs'
ends. It skips (metric, step) points the run already has, holds the run's writer lock
(:meth:`~tokcal.trackers.base.Tracker.writer_lock`) while it writes, and deletes each
file only once its replay succeeded. An unreadable file (cut off, not JSON) is moved
aside as ``*.spool.json.bad`` with a warning; the others are replayed. So is an entry
that cannot be replayed (a step that is not a whole number, metrics, a scalar or a
per-sample record of the wrong shape: :func:`entry_problem`), checked before anything is
replayed, so that it never blocks the entries after it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokcal.core.metrics import DecisionMetrics
from tokcal.core.per_sample import PerSample
from tokcal.errors import TokcalError
from tokcal.io import exclusive_lock
from tokcal.trackers.base import (
    Tracker,
    TrackerUnreachable,
    backend_class,
    check_per_sample,
    check_scalar_selection,
    check_tags,
    redact,
    redact_all,
    sample_columns,
    selected_scalars,
    to_jsonable,
    write_atomic,
    writer_wait,
)

logger = logging.getLogger(__name__)

SPOOL_SUFFIX = ".spool.json"
BAD_SUFFIX = ".bad"  # an unreadable entry, moved aside
SPOOL_VERSION = 1
RETRY_AFTER_S = 30.0  # after a failed call, spool without trying the server for this long
# Where ``tokcal sync OUTPUT_DIR`` looks for a spool, in this order (the callback's is tokcal/spool).
SPOOL_DIR_NAMES: tuple[str, ...] = ("tokcal/spool", "tokcal-spool", "spool", "tokcal-runs/spool")
# Replay order: creating the run, settings, evaluations by step, then ending the run.
_KIND_ORDER: dict[str, int] = {"create": -1, "config": 0, "evaluation": 1, "close": 2}
_STATUSES = ("FINISHED", "FAILED")


class UnopenedRun(Tracker):
    """A remote run whose server did not answer when it was to be opened.

    It records what ``tokcal sync`` needs to create the run later (or to attach to
    ``run_id``); every call raises :class:`TrackerUnreachable`, so that a
    :class:`SpoolingTracker` around it spools the call. A new run gets a ``pending`` id
    that its spool entries and ``tokcal.json`` carry until sync creates it.
    """

    def __init__(self, cls: type[Tracker], error: BaseException, *, run_id: str | None = None,
                 run_name: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        self.name = cls.name
        self.remote = cls.remote
        self._thread_safe = cls.thread_safe
        self._run_id = run_id
        self.pending = uuid.uuid4().hex if run_id is None else None
        self.error = error
        shown = redact_all(dict(options or {}))
        self.open_args = {"run_name": run_name, **shown}
        self._target: dict[str, Any] = {"backend": cls.name, "run_id": run_id,
                                         **{o: shown.get(o) for o in cls.options}, "local_dir": None}
        if self.pending:
            self._target["pending"] = self.pending

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        return self._thread_safe

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def started_run(self) -> bool:
        return self.pending is not None

    def describe(self) -> dict[str, Any]:
        return dict(self._target)

    def _down(self) -> TrackerUnreachable:
        return TrackerUnreachable(f"{self.name} was not reachable when the run was to be opened ({self.error})")

    def log_config(self, config: dict[str, Any]) -> None:
        raise self._down()

    def _write_evaluation(self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
                          per_sample: PerSample | None, tags: dict[str, Any],
                          scalars: str | tuple[str, ...] = "all") -> None:
        raise self._down()

    def logged_steps(self, key: str) -> set[int]:
        raise self._down()

    def close(self) -> None:
        if self.pending:  # the run tokcal was to start: sync ends it
            raise self._down()

    def close_failed(self) -> None:
        self.close()


class SpoolingTracker(Tracker):
    """Wrap ``inner`` so that a failing call is spooled to ``spool_dir`` instead of raising.

    Invalid arguments (a negative step, not a ``DecisionMetrics``) still raise: they are
    bugs in the caller, not tracker failures.

    Args:
        inner: the remote tracker.
        spool_dir: where failed calls are kept.
        retry_after_s: after a failure, calls go to the spool without trying the server
            for this many seconds.

    Example:
        >>> tracker = SpoolingTracker(MlflowTracker(tracking_uri=uri), "tokcal-spool")  # doctest: +SKIP
        >>> tracker.log_evaluation(metrics, step=120)  # server down: spooled, one warning  # doctest: +SKIP
    """

    def __init__(self, inner: Tracker, spool_dir: str | os.PathLike[str], *,
                 retry_after_s: float = RETRY_AFTER_S) -> None:
        if not isinstance(inner, Tracker):
            raise TokcalError(f"expected inner to be a Tracker, got {type(inner).__name__}")
        self.inner = inner
        self.spool_dir = Path(spool_dir)
        self.name = inner.name
        self.spooled = 0
        self.retry_after_s = retry_after_s
        self._warned = False
        self._down_until = -math.inf
        self._down_error: BaseException | None = None

    @classmethod
    def unopened(cls, backend: type[Tracker], error: BaseException, spool_dir: str | os.PathLike[str], *,
                 run_id: str | None = None, run_name: str | None = None,
                 options: Mapping[str, Any] | None = None) -> "SpoolingTracker":
        """Stand in for a run whose server did not answer: spool its creation (a new run)
        and every later call; one warning says how to replay them."""
        inner = UnopenedRun(backend, error, run_id=run_id, run_name=run_name, options=options)
        tracker = cls(inner, spool_dir, retry_after_s=math.inf)
        tracker._warned = True
        tracker._down_until, tracker._down_error = math.inf, error
        if inner.pending:
            tracker._spool({"kind": "create", "step": 0, "open": inner.open_args}, error)
        logger.warning(
            "tokcal: could not reach %s to open %s (%s); training goes on, and %s every evaluation "
            "are kept in %s. When the server is back: tokcal sync %s",
            backend.name, f"run {run_id}" if run_id else "a new run", _short(error),
            "the run's creation and" if inner.pending else "", tracker.spool_dir, tracker.spool_dir,
        )
        return tracker

    @property
    def run_id(self) -> str | None:
        return self.inner.run_id

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        return self.inner.thread_safe

    @property
    def started_run(self) -> bool:
        return self.inner.started_run

    @property
    def pending(self) -> str | None:
        """The pending id of a run that is still to be created by ``tokcal sync``."""
        return getattr(self.inner, "pending", None)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "spool_dir": str(self.spool_dir.resolve())}

    def writer_lock(self) -> Path:
        return self.inner.writer_lock()

    def viewer(self) -> str:
        if self.pending:
            return f"not created yet (the server did not answer); kept in {self.spool_dir}, replay with: tokcal sync {self.spool_dir}"
        return self.inner.viewer()

    def _call(self, call: Callable[[], None], entry: Callable[[], dict[str, Any]]) -> None:
        """Make ``call``, or spool ``entry()`` when it fails or the server failed recently."""
        if time.monotonic() < self._down_until:
            self._spool(entry(), self._down_error or RuntimeError("the server failed recently"))
            return
        try:
            call()
        except Exception as exc:  # deliberate: spool and warn, never stop training
            self._down_until, self._down_error = time.monotonic() + self.retry_after_s, exc
            self._spool(entry(), exc)

    def log_config(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        self._call(lambda: self.inner.log_config(config),
                   lambda: {"kind": "config", "step": 0, "config": redact_all(to_jsonable(config))})

    def _write_evaluation(
        self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
        per_sample: PerSample | None, tags: dict[str, Any], scalars: str | tuple[str, ...] = "all",
    ) -> None:
        self._call(
            lambda: self.inner.log_evaluation(metrics, step, samples=samples, per_sample=per_sample, tags=tags,
                                              scalars=scalars),
            lambda: {"kind": "evaluation", "step": step, "metrics": metrics.to_dict(),
                     "samples": to_jsonable(samples), "tags": to_jsonable(tags),
                     "scalars": scalars if isinstance(scalars, str) else list(scalars),
                     "per_sample": None if per_sample is None else json.loads(per_sample.to_json())},
        )

    def logged_steps(self, key: str) -> set[int]:
        """The inner run's steps; raises at once (without asking) while the server is
        left alone after a failure, and a failure here starts that pause too."""
        if time.monotonic() < self._down_until:
            raise TrackerUnreachable(f"{self.name} failed recently ({_short(self._down_error or RuntimeError())}); "
                                     "not asked again yet")
        try:
            return self.inner.logged_steps(key)
        except Exception as exc:
            self._down_until, self._down_error = time.monotonic() + self.retry_after_s, exc
            raise

    def close(self) -> None:
        self._end("FINISHED")

    def close_failed(self) -> None:
        self._end("FAILED")

    def _end(self, status: str) -> None:
        # Only a run this tracker started is ended on close; sync ends it when this fails
        # (or when the server failed moments ago: the end of training does not wait for it).
        if not self.inner.started_run:  # nothing to end on the server: no close entry either
            self.inner.close()
            return
        self._call(lambda: self.inner.close() if status == "FINISHED" else self.inner.close_failed(),
                   lambda: {"kind": "close", "step": 0, "status": status})
        if self.spooled:
            logger.info("tokcal: %d call(s) to %s were kept in %s; replay them with: tokcal sync %s",
                        self.spooled, self.name, self.spool_dir, self.spool_dir)

    def _spool(self, entry: dict[str, Any], exc: BaseException) -> None:
        entry = {
            "version": SPOOL_VERSION,
            **entry,
            "target": redact_all(self.inner.describe()),
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
            logger.debug("tokcal: spooled %s at step %s to %s (%s)", entry["kind"], entry["step"], self.spool_dir,
                         _short(exc))


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# ----------------------------------------------------------------------------- replay


@dataclass
class SyncResult:
    """What :func:`sync_spool` did."""

    spool_dirs: list[Path]
    replayed: int = 0  # entries pushed (wholly or partly), runs created and ended included
    skipped: int = 0  # entries whose points were all in the run already
    points: int = 0  # scalar (metric, step) points written
    remaining: int = 0  # entries left in the spool
    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # pending id -> the new run's describe()
    set_aside: list[Path] = field(default_factory=list)  # entries that cannot be replayed, moved to *.bad
    reasons: dict[Path, str] = field(default_factory=dict)  # each of those -> why
    failed_at: Path | None = None  # the entry whose replay failed (the server's error)
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spool_dir(self) -> Path:
        """The first spool folder."""
        return self.spool_dirs[0]


def find_spool_dirs(path: str | os.PathLike[str], recorded: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """The spool folders for ``path``: the folder itself when it holds ``*.spool.json``
    files, the known spool sub-folders (:data:`SPOOL_DIR_NAMES`, the callback's
    ``tokcal/spool`` first), and the ``recorded`` ones (``tokcal.json``'s ``spool_dir``)
    that exist; ``[path]`` when there is none (an empty spool: nothing to do).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> (out / "tokcal" / "spool").mkdir(parents=True)
        >>> [p.relative_to(out).as_posix() for p in find_spool_dirs(out)]
        ['tokcal/spool']
    """
    p = Path(path)
    if not p.is_dir():
        raise TokcalError(f"expected a spool folder or an output folder, got {p} (not a folder)")
    candidates = [p] if any(p.glob(f"*{SPOOL_SUFFIX}")) else []
    candidates += [p / name for name in SPOOL_DIR_NAMES] + [Path(r) for r in recorded]
    found: list[Path] = []
    for c in candidates:
        if c.is_dir() and c.resolve() not in {f.resolve() for f in found}:
            found.append(c)
    return found or [p]


def find_spool_dir(path: str | os.PathLike[str]) -> Path:
    """The first of :func:`find_spool_dirs`."""
    return find_spool_dirs(path)[0]


def read_spool(spool_dir: str | os.PathLike[str], *, set_aside: list[Path] | None = None,
               move_bad: bool = True, reasons: dict[Path, str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The spooled entries that can be replayed: runs to create first, then settings,
    evaluations by step (then by when they were spooled) and runs' ends.

    Every entry is checked before anything is replayed (:func:`entry_problem`): one that
    cannot be (cut off, not JSON, a folder, a step that is not a whole number >= 0,
    metrics, a scalar, a per-sample record or a target of the wrong shape) is moved aside
    to ``*.spool.json.bad`` with a warning that names it and says why, and the others are
    replayed.

    Args:
        spool_dir: the folder.
        set_aside: the entries set aside are appended here.
        move_bad: move such an entry aside; ``False`` leaves it (``--dry-run``).
        reasons: the entry set aside (its new path) -> what is wrong with it (``is unreadable
            (...)``, ``cannot be replayed: ...``), filled in when given.
    """
    entries: list[tuple[Path, dict[str, Any]]] = []
    for file in sorted(Path(spool_dir).glob(f"*{SPOOL_SUFFIX}")):
        entry: Any = None
        problem = None
        if not file.is_file():
            problem = "is not a file"
        else:
            try:
                entry = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
                problem = f"is unreadable ({type(exc).__name__}: {exc})"
            else:
                why = entry_problem(entry)
                problem = None if why is None else f"cannot be replayed: {why}"
        if problem is not None:
            problem = _one_line(problem)  # the entry's own keys and values may hold line breaks
            bad = file.with_name(file.name + BAD_SUFFIX)
            if move_bad:
                os.replace(file, bad)
                logger.warning("tokcal: spool entry %s %s; moved aside to %s, the other entries are replayed",
                               file, problem, bad.name)
            if set_aside is not None:
                set_aside.append(bad if move_bad else file)
            if reasons is not None:
                reasons[bad if move_bad else file] = problem
            continue
        entries.append((file, entry))
    entries.sort(key=_order)
    return entries


def _order(fe: tuple[Path, dict[str, Any]]) -> tuple[int, int, float, str]:
    entry = fe[1]
    created = entry.get("created")
    when = float(created) if _is_number(created) else 0.0
    return _KIND_ORDER[entry["kind"]], int(entry["step"]), when, fe[0].name


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _numbers(value: Any, name: str, *, ints: bool = False, none_ok: bool = False) -> str | None:
    """Why ``value`` is not a list of finite numbers (whole numbers >= 0 with ``ints``,
    ``null`` allowed with ``none_ok``); ``None`` when it is one."""
    if not isinstance(value, list):
        return f"{name} is {type(value).__name__}, not a list"
    for x in value:
        if x is None and none_ok:
            continue
        if not _is_number(x) or (ints and (not isinstance(x, int) or x < 0)):
            return f"{name} holds {x!r}, not {'a whole number >= 0' if ints else 'a finite number'}"
    return None


def _bins_problem(doc: Any, name: str, fields: tuple[str, ...]) -> str | None:
    """Why ``doc`` is not bins over edges (``edges`` one longer than each of ``fields``)."""
    if not isinstance(doc, dict):
        return f"{name} is {type(doc).__name__}, not an object"
    problem = _numbers(doc.get("edges"), f"{name}.edges")
    if problem:
        return problem
    for f in fields:
        problem = _numbers(doc.get(f), f"{name}.{f}", ints=f in ("counts", "n"), none_ok=f not in ("counts", "n"))
        if problem:
            return problem
        if len(doc[f]) != len(doc["edges"]) - 1:
            return f"{name}.{f} has {len(doc[f])} values for {len(doc['edges'])} edges"
    return None


def _metrics_problem(m: Any) -> str | None:
    """Why ``m`` is not a ``DecisionMetrics.to_dict()`` that can be replayed."""
    if not isinstance(m, dict):
        return f"metrics is {type(m).__name__}, not an object"
    labels = m.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        return f"metrics.labels is {labels!r}, not a list of label strings"
    if not isinstance(m.get("prefix", "eval_"), str):
        return f"metrics.prefix is {m.get('prefix')!r}, not a string"
    scalars = m.get("scalars")
    if not isinstance(scalars, dict) or not scalars:
        return "metrics.scalars is missing or empty" if not scalars else "metrics.scalars is not an object"
    for k, v in scalars.items():
        if v is not None and not _is_number(v):
            return f"scalar {k!r} is {v!r}, not a finite number"
    if not any(v is not None for v in scalars.values()):
        return "metrics.scalars has no value"
    for name in ("reliability", "positive_reliability"):
        if m.get(name):
            problem = _bins_problem(m[name], f"metrics.{name}", ("counts", "confidence", "accuracy"))
            if problem:
                return problem
    hists = m.get("histograms", {})
    if not isinstance(hists, dict):
        return "metrics.histograms is not an object"
    for k, h in hists.items():
        problem = _bins_problem(h, f"metrics.histograms.{k}", ("counts",))
        if problem:
            return problem
    notes = m.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(x, str) for x in notes):
        return "metrics.notes is not a list of strings"
    rc = m.get("risk_coverage")
    if rc:
        if not isinstance(rc, dict):
            return "metrics.risk_coverage is not an object"
        sizes = set()
        for f in ("coverage", "risk", "n", "threshold"):
            if f in rc:
                problem = _numbers(rc[f], f"metrics.risk_coverage.{f}", ints=f == "n", none_ok=f != "n")
                if problem:
                    return problem
                sizes.add(len(rc[f]))
        if len(sizes) > 1 or "coverage" not in rc or "n" not in rc:
            return "metrics.risk_coverage is not a curve (coverage, n ... of one length)"
    return None


def _one_line(text: str) -> str:
    r"""``text`` with every character that is not printable (line breaks, tabs, control
    characters) written as its escape, so a message about an entry stays one line.

    Example:
        >>> _one_line("metrics.histograms.\r is NoneType")
        'metrics.histograms.\\r is NoneType'
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def entry_problem(entry: Any) -> str | None:
    """Why a spool entry cannot be replayed (``None`` when it can): checked before anything
    is replayed, so that one bad entry is set aside instead of stopping every later one.

    Example:
        >>> entry_problem({"kind": "evaluation", "step": "two", "target": {"backend": "local"}})
        "step is 'two', not a whole number >= 0"
        >>> entry_problem({"kind": "close", "step": 0, "target": {"backend": "local", "run_id": "r1"}}) is None
        True
    """
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__}"
    if not isinstance(entry.get("kind"), str) or entry["kind"] not in _KIND_ORDER:
        return f"kind is {entry.get('kind')!r}, not one of {', '.join(_KIND_ORDER)}"
    step = entry.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step is {step!r}, not a whole number >= 0"
    target = entry.get("target")
    if not isinstance(target, dict):
        return f"target is {type(target).__name__}, not an object naming the run"
    bad = sorted(k for k, v in target.items() if v is not None and not isinstance(v, str))
    if bad or not isinstance(target.get("backend"), str):
        return f"target has {bad or ['backend']} that are not strings"
    try:
        backend_class(target["backend"])
    except TokcalError as exc:
        return f"target: {exc}"
    kind = entry["kind"]
    if kind == "create":
        opened = entry.get("open")
        if opened is not None and (not isinstance(opened, dict) or any(
                v is not None and not isinstance(v, str) for v in opened.values())):
            return "open is not an object of strings"
        if not isinstance(target.get("pending"), str) or not isinstance(entry.get("created_run_id"), (str, type(None))):
            return "a 'create' entry without a pending run id"
    elif kind == "config":
        if not isinstance(entry.get("config"), dict):
            return f"config is {type(entry.get('config')).__name__}, not an object"
    elif kind == "close":
        if entry.get("status", "FINISHED") not in _STATUSES:
            return f"status is {entry.get('status')!r}, not one of {', '.join(_STATUSES)}"
    else:
        problem = _metrics_problem(entry.get("metrics"))
        if problem:
            return problem
        try:  # the checks log_evaluation makes before it writes
            metrics = DecisionMetrics.from_dict(entry["metrics"])
            samples = entry.get("samples")
            if samples is not None:
                if not isinstance(samples, list):
                    return f"samples is {type(samples).__name__}, not a list"
                sample_columns(samples)
            check_tags(entry.get("tags"))
            check_scalar_selection(entry.get("scalars", "all"))  # which scalars it charts
            doc = entry.get("per_sample")
            if doc is not None:
                check_per_sample(PerSample.from_json(json.dumps(doc), where="per_sample"), metrics)
        except TokcalError as exc:
            return str(exc)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def sync_spool(
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    backend: str | None = None,
    run_id: str | None = None,
    on_created: Callable[[str, dict[str, Any]], None] | None = None,
    created: Mapping[str, str] | None = None,
    **options: Any,
) -> SyncResult:
    """Replay a spool into its run(s); idempotent per (metric, step).

    Each entry goes to the run recorded with it, unless ``backend``/``run_id``/the
    backend's options (``tracking_uri``, ``project``, ``entity``) say otherwise. A run
    still to be created (its server was down when training began) is created first,
    unless ``run_id`` is given; ``on_created(pending_id, described)`` hears of each new
    run (``tokcal sync`` records it in ``tokcal.json``). Scalars the run already has at
    that step are not logged again; an entry whose scalars are all there is dropped. Each
    file is deleted only after its replay succeeded; the first failure stops the replay
    with a :class:`TokcalError`.

    Args:
        path: a spool folder or an output folder (see :func:`find_spool_dirs`), or a list
            of spool folders.
        created: pending id -> run id of runs an earlier sync created (from
            ``tokcal.json``), for entries that a training still running spooled after it.

    Example:
        >>> result = sync_spool("out")  # doctest: +SKIP
        >>> result.replayed, result.skipped, result.remaining  # doctest: +SKIP
        (3, 0, 0)
    """
    dirs = find_spool_dirs(path) if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    result = SyncResult(spool_dirs=dirs)
    entries = [e for d in dirs for e in read_spool(d, set_aside=result.set_aside, reasons=result.reasons)]
    entries.sort(key=_order)
    overrides = {"run_id": run_id, **options}
    creates = {e["target"].get("pending"): (f, e) for f, e in entries if e["kind"] == "create"}
    runs = {**(created or {}), **(_create_runs(creates, backend, overrides, on_created, result) if not run_id else {})}
    groups: dict[tuple[Any, ...], list[tuple[Path, dict[str, Any]]]] = {}
    opens: dict[tuple[Any, ...], dict[str, Any]] = {}
    for file, entry in entries:  # every target is resolved before anything is replayed
        if entry["kind"] == "create":
            continue
        target = dict(entry["target"])
        if target.get("pending") and not target.get("run_id") and not run_id:
            if target["pending"] not in runs:
                raise TokcalError(f"{file.name}: its run was to be created by sync, but the spool has no 'create' "
                                  "entry for it; expected --run-id to name the run to replay it into")
            target["run_id"] = runs[target["pending"]]
        name = backend or target.get("backend")
        try:
            kwargs = backend_class(name).reopen_kwargs(target, overrides, where="the spool")
        except TokcalError as exc:
            raise TokcalError(f"{file.name}: {exc}") from exc
        kwargs = {"backend": name, **{k: v for k, v in kwargs.items() if v is not None}}
        key = tuple(sorted(kwargs.items()))
        groups.setdefault(key, []).append((file, entry))
        opens[key] = kwargs
    from tokcal.trackers import open_tracker

    failures: list[tuple[str, BaseException]] = []  # one run that fails does not hold up the others
    for key, group in groups.items():
        try:
            tracker = open_tracker(spool=False, **opens[key])
        except TokcalError as exc:
            failures.append((f"{exc}; its {len(group)} spooled entries stay", exc))
            continue
        result.targets.append(tracker.describe())
        try:
            with exclusive_lock(tracker.writer_lock(), f"{tracker.name} run {tracker.run_id}", wait=writer_wait()):
                _replay(tracker, group, result)
        except Exception as exc:  # deliberate: said below, after the other runs are replayed
            at = f" at {result.failed_at.name}" if result.failed_at else ""
            failures.append((f"replay into {tracker.name} run {tracker.run_id} failed{at} ({_short(exc)})", exc))
        finally:
            tracker.close()
    if failures:
        result.remaining = _count(dirs)
        message, cause = failures[0]
        more = f" (and {len(failures) - 1} other run(s) failed)" if len(failures) > 1 else ""
        raise TokcalError(
            f"{message}{more}; {result.remaining} of {len(entries)} entries are left in "
            f"{', '.join(map(str, dirs))}: run tokcal sync again"
        ) from cause
    for file, _ in creates.values():  # every entry of the new runs is in: the record can go
        file.unlink(missing_ok=True)
    result.remaining = _count(dirs)
    return result


def _per_sample(entry: Mapping[str, Any], file: Path) -> PerSample | None:
    doc = entry.get("per_sample")
    return None if doc is None else PerSample.from_json(json.dumps(doc), where=str(file))


def _count(dirs: Iterable[Path]) -> int:
    return sum(1 for d in dirs for _ in d.glob(f"*{SPOOL_SUFFIX}"))


def _create_runs(creates: Mapping[Any, tuple[Path, dict[str, Any]]], backend: str | None,
                 overrides: Mapping[str, Any], on_created: Callable[[str, dict[str, Any]], None] | None,
                 result: SyncResult) -> dict[str, str]:
    """Create each pending run (or take the id an earlier sync recorded): pending id -> run id."""
    from tokcal.trackers import open_tracker

    runs: dict[str, str] = {}
    for pending, (file, entry) in creates.items():
        if not pending:
            raise TokcalError(f"{file.name}: expected a 'create' entry with a pending id, got none")
        if entry.get("created_run_id"):
            runs[pending] = entry["created_run_id"]
            continue
        target = entry["target"]
        name = backend or target.get("backend")
        cls = backend_class(name)
        kwargs = cls.reopen_kwargs({**target, "run_id": None}, overrides, where="the spool")
        for option, value in (entry.get("open") or {}).items():  # experiment, run name: only for a new run
            if kwargs.get(option) is None and value is not None and "***" not in str(value) and (
                    option in cls.options or option == "run_name"):
                kwargs[option] = value
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        created = open_tracker(name, spool=False, **kwargs)  # not closed: that would end the new run
        described = created.describe()
        runs[pending] = created.run_id
        write_atomic(file, json.dumps({**entry, "created_run_id": created.run_id}, indent=1).encode("utf-8"))
        result.created[pending] = described
        result.replayed += 1
        logger.info("tokcal: created %s run %s for the evaluations spooled while the server was down",
                    name, created.run_id)
        if on_created is not None:
            on_created(pending, described)
    return runs


def _replay(tracker: Tracker, group: list[tuple[Path, dict[str, Any]]], result: SyncResult) -> None:
    """Replay one target's entries, deleting each file once it is in the run."""
    known: dict[str, set[int]] = {}
    for file, entry in group:
        result.failed_at = file
        if entry["kind"] in ("config", "close"):
            if entry["kind"] == "config":
                tracker.log_config(entry["config"])
            else:
                status = entry.get("status", "FINISHED")
                tracker.finish_run(status if status in _STATUSES else "FINISHED")
            file.unlink()
            result.replayed += 1
            continue
        step = int(entry["step"])
        metrics = DecisionMetrics.from_dict(entry["metrics"])
        selection = entry.get("scalars", "all")  # entries spooled before the choice existed logged all
        scalars = selected_scalars(metrics, selection)
        for k in scalars:
            if k not in known:
                known[k] = set(tracker.logged_steps(k))
        present = {k for k in scalars if step in known[k]}
        if scalars and present == set(scalars):
            result.skipped += 1
        else:
            if present:
                metrics.scalars = {k: v for k, v in metrics.scalars.items() if k not in present}
            tracker.log_evaluation(metrics, step, samples=entry.get("samples"), tags=entry.get("tags"),
                                   per_sample=_per_sample(entry, file), scalars=selection)
            for k in scalars:
                if k not in present:
                    known[k].add(step)
                    result.points += 1
            result.replayed += 1
        file.unlink()
    result.failed_at = None
