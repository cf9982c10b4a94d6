"""The local backend: a folder per run, no server.

Layout of ``<local_dir>/<run_id>/``::

    run.json                  run id, name, creation time
    config.json               the tracking settings (``log_config``)
    evaluations.jsonl         one line per evaluation (see below)
    step_000120_eval_decision_reliability.png   (and _reliability_positive, _histograms)
    step_000120_eval_per_sample.json            per-sample record (tokcal.core.per_sample)
    step_000120_eval_samples.jsonl              per-sample table, when given

Each line of ``evaluations.jsonl`` is ``DecisionMetrics.to_dict()`` (``labels``,
``prefix``, ``scalars``, ``reliability``, ``positive_reliability``, ``histograms``,
``notes``) plus ``step``, ``timestamp``, ``tags``, ``images``, ``per_sample_file`` and
``samples_file``, so
``DecisionMetrics.from_dict(line)`` gives the metrics back. A line is written with one
``write`` and fsynced; a crash can leave at most an unterminated last line, which the
reader skips with a warning and the next write removes. One process at a time writes a
run: ``tokcal backfill`` and ``tokcal sync`` hold ``.tokcal-writer.lock`` in the run folder.

``tokcal report`` reads a run folder, or a folder of run folders, back with
:func:`read_local`; ``tokcal.json`` records the run folder as ``local_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokcal.core.metrics import DecisionMetrics
from tokcal.core.per_sample import PerSample
from tokcal.core.per_sample import file_name as per_sample_name
from tokcal.errors import TokcalError
from tokcal.io import check_writable
from tokcal.trackers.base import (
    DEFAULT_LOCAL_DIR,
    FIGURE_SUFFIX,
    Point,
    Series,
    Tracker,
    dumps_line,
    is_backfilled,
    redact_all,
    step_name,
    to_jsonable,
    write_atomic,
)

logger = logging.getLogger(__name__)

EVALUATIONS_FILE = "evaluations.jsonl"
RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
WRITER_LOCK = ".tokcal-writer.lock"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


class LocalTracker(Tracker):
    """A run stored as files under ``<local_dir>/<run_id>/``; the default backend.

    Args:
        local_dir: folder that holds one sub-folder per run.
        run_id: attach to this existing run; a new one is created when ``None``.
        run_name: a human-readable name stored in ``run.json`` (new runs only).

    Example:
        >>> import tempfile
        >>> tracker = LocalTracker(tempfile.mkdtemp(), run_name="demo")
        >>> tracker.describe()["backend"]
        'local'
    """

    name = "local"
    source_form = "a local store folder"

    def __init__(
        self, local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR, *, run_id: str | None = None,
        run_name: str | None = None,
    ) -> None:
        root = Path(local_dir)
        if run_id is not None:
            if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
                raise TokcalError(f"expected a local run id made of letters, digits, '.', '_' or '-', got {run_id!r}")
            self._dir = root / run_id
            if not (self._dir / RUN_FILE).is_file() and not (self._dir / EVALUATIONS_FILE).is_file():
                known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
                raise TokcalError(f"expected an existing local run {run_id!r} in {root}, got none; runs there: {known}")
            self._run_id = run_id
        else:
            self._run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            self._dir = root / self._run_id
            self._dir.mkdir(parents=True, exist_ok=False)
            info = {"run_id": self._run_id, "run_name": run_name, "created": time.time()}
            write_atomic(self._dir / RUN_FILE, json.dumps(info, indent=2).encode("utf-8"))

    @classmethod
    def open(
        cls, *, run_id: str | None = None, run_name: str | None = None,
        local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR, **options: Any,
    ) -> "LocalTracker":
        return cls(local_dir, run_id=run_id, run_name=run_name, **options)

    @classmethod
    def reopen_kwargs(
        cls, described: Mapping[str, Any], overrides: Mapping[str, Any], *,
        where: str = "tokcal.json", default_local_dir: str | None = None,
    ) -> dict[str, Any]:
        """The run id, and ``local_dir``: the one given, else the folder that holds the
        recorded run folder, else ``default_local_dir``, else ``tokcal-runs``."""
        recorded = Path(described["local_dir"]).parent if described.get("local_dir") else None
        local_dir = overrides.get("local_dir") or recorded or default_local_dir or DEFAULT_LOCAL_DIR
        return {"run_id": overrides.get("run_id") or described.get("run_id"), "local_dir": str(local_dir)}

    @classmethod
    def location(cls, described: Mapping[str, Any]) -> str:
        return str(described.get("local_dir") or "")

    @classmethod
    def claims_source(cls, source: str) -> bool:
        return Path(source).exists()

    @classmethod
    def read_runs(cls, address: str, overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return read_local(address)

    @classmethod
    def read_described(cls, described: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return read_local(described["local_dir"]) if described.get("local_dir") else []

    @property
    def started_run(self) -> bool:
        return False  # a folder has no run state to end

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def directory(self) -> Path:
        """The run's folder."""
        return self._dir

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "run_id": self._run_id, "local_dir": str(self._dir.resolve())}

    def viewer(self) -> str:
        """The run's folder, and the command that turns it into a report."""
        folder = self._dir.resolve()
        return f"folder {folder} (report: tokcal report {folder})"

    def check_writable(self) -> None:
        check_writable(self._dir, f"the local run {self._run_id}")

    def writer_lock(self) -> Path:
        """``<run folder>/.tokcal-writer.lock``: beside the store, so it follows the folder."""
        return self._dir / WRITER_LOCK

    def log_config(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        data = json.dumps(redact_all(to_jsonable(config)), indent=2, allow_nan=False).encode("utf-8")
        write_atomic(self._dir / CONFIG_FILE, data)

    def _write_evaluation(
        self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
        per_sample: PerSample | None, tags: dict[str, Any], scalars: str | tuple[str, ...] = "all",
    ) -> None:
        # A store of records, not of charts: every scalar is kept whatever ``scalars`` picks.
        from tokcal.core.plots import figure_to_png, metric_figures

        images: dict[str, str] = {}
        for fig_name, fig in metric_figures(metrics, step=step).items():
            file_name = f"{step_name(step)}_{metrics.prefix}{FIGURE_SUFFIX.get(fig_name, fig_name)}.png"
            write_atomic(self._dir / file_name, figure_to_png(fig))
            images[fig_name] = file_name
        per_sample_file = None
        if per_sample is not None:
            per_sample_file = per_sample_name(step, metrics.prefix)
            write_atomic(self._dir / per_sample_file, per_sample.to_json())
        samples_file = None
        if samples is not None:
            samples_file = f"{step_name(step)}_{metrics.prefix}samples.jsonl"
            write_atomic(self._dir / samples_file, b"".join(dumps_line({"step": step, **row}) for row in samples))
        record = {
            "step": step,
            "timestamp": time.time(),
            "tags": tags,
            **metrics.to_dict(),
            "images": images,
            "per_sample_file": per_sample_file,
            "samples_file": samples_file,
        }
        append_line(self._dir / EVALUATIONS_FILE, dumps_line(record))

    def logged_steps(self, key: str) -> set[int]:
        return {
            int(rec["step"])
            for rec in read_local_store(self._dir)
            if rec.get("scalars", {}).get(key) is not None
        }


def append_line(path: Path, line: bytes) -> None:
    """Append one complete line and fsync it; first drop an unterminated tail left by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                keep = _last_newline_end(fh, size)
                logger.warning("%s: removing an unterminated last line (%d bytes) left by an interrupted write",
                               path, size - keep)
                fh.truncate(keep)
        fh.seek(0, os.SEEK_END)
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _last_newline_end(fh: Any, size: int) -> int:
    """Offset just after the last ``\\n`` in the file (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        fh.seek(start)
        chunk = fh.read(pos - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        pos = start
    return 0


def read_local_store(path: str | os.PathLike[str], *, last_per_step: bool = False) -> list[dict[str, Any]]:
    """The evaluations of a local run, in the order they were logged.

    Args:
        path: the run folder or its ``evaluations.jsonl``.
        last_per_step: keep only the latest line per (step, prefix), sorted by step; a
            step logged twice (e.g. re-scored) then counts once.

    Returns:
        One dict per line; ``DecisionMetrics.from_dict(record)`` rebuilds the metrics.
        An unterminated last line (a crash mid-write) is skipped with a warning; any other
        unreadable line is a :class:`TokcalError` naming its line number.

    Example:
        >>> import tempfile
        >>> read_local_store(LocalTracker(tempfile.mkdtemp()).directory)
        []
    """
    p = Path(path)
    file = p / EVALUATIONS_FILE if p.is_dir() else p
    if not file.is_file():
        if p.is_dir():
            return []
        raise TokcalError(f"expected a local run folder or {EVALUATIONS_FILE}, got {p} (not found)")
    raw = file.read_bytes()
    lines = raw.split(b"\n")
    terminated = raw.endswith(b"\n")
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_tail = i == len(lines) and not terminated
        try:
            rec = json.loads(line)
        except ValueError as exc:
            if is_tail:
                logger.warning("%s: skipping a truncated last line (%d bytes), left by an interrupted write",
                               file, len(line))
                continue
            raise TokcalError(f"{file}, line {i}: expected a JSON object, got unreadable text ({exc})") from exc
        if not isinstance(rec, dict) or "step" not in rec:
            raise TokcalError(f"{file}, line {i}: expected an evaluation record with a 'step', got {str(rec)[:80]!r}")
        records.append(rec)
    if last_per_step:
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        for rec in records:
            latest[(int(rec["step"]), str(rec.get("prefix", "")))] = rec
        records = [latest[k] for k in sorted(latest)]
    return records


def read_local(path: str | os.PathLike[str]) -> list[Series]:
    """A local run folder (``evaluations.jsonl`` inside), or a folder of run folders, as
    one :class:`~tokcal.trackers.base.Series` per run and metric prefix.

    Raises:
        TokcalError: no evaluations found under ``path``.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from tokcal.core.metrics import compute_metrics
        >>> m = compute_metrics(np.array([[0.8, 0.1], [0.3, 0.6]]), np.array([0, 1]), ["Accept", "Reject"])
        >>> tracker = LocalTracker(tempfile.mkdtemp())
        >>> tracker.log_evaluation(m, step=10, tags={"tokcal_backfill": "true"})
        >>> [(s.steps, s.points[0].backfilled) for s in read_local(tracker.directory)]
        [([10], True)]
    """
    p = Path(path)
    if not p.exists():
        raise TokcalError(f"report source not found: {p}")
    if p.is_file():
        runs = [p.parent] if p.name == EVALUATIONS_FILE else []
    elif (p / EVALUATIONS_FILE).is_file():
        runs = [p]
    else:
        runs = sorted(d for d in p.iterdir() if (d / EVALUATIONS_FILE).is_file())
    if not runs:
        raise TokcalError(f"no local tokcal runs in {p}; expected a run folder with {EVALUATIONS_FILE} "
                          "or a folder of them (e.g. <output_dir>/tokcal)")
    out: list[Series] = []
    for run_dir in runs:
        by_prefix: dict[str, list[Point]] = {}
        for rec in read_local_store(run_dir, last_per_step=True):
            m = DecisionMetrics.from_dict(rec)
            point = Point(int(rec["step"]), m, is_backfilled(rec.get("tags")), read_per_sample(run_dir, rec))
            by_prefix.setdefault(m.prefix, []).append(point)
        for prefix, points in sorted(by_prefix.items()):
            out.append(Series.of(f"local {_run_label(run_dir)} · {prefix.rstrip('_')}", points, str(run_dir)))
    return out


def _run_label(run_dir: Path) -> str:
    """A run's ``run_name`` from ``run.json`` (with its id), else its folder's name."""
    try:
        name = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("run_name")
    except (OSError, ValueError, AttributeError):  # no run.json (an evaluations.jsonl alone) or a broken one
        name = None
    return f"{name} ({run_dir.name})" if isinstance(name, str) and name else run_dir.name


def read_per_sample(run_dir: Path, record: dict[str, Any]) -> PerSample | None:
    """The per-sample record an ``evaluations.jsonl`` line names (``None`` when it names none).

    Raises:
        TokcalError: the line names a file that is missing or broken.
    """
    name = record.get("per_sample_file")
    if not name:
        return None
    path = run_dir / name
    if not path.is_file():
        raise TokcalError(f"{run_dir / EVALUATIONS_FILE}: step {record.get('step')} names {name}, which is missing; "
                          "restore it or remove that line")
    return PerSample.from_json(path.read_bytes(), where=str(path))


def scalar_history(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one scalar across records, in record order."""
    return [(int(r["step"]), float(r["scalars"][key])) for r in records if r.get("scalars", {}).get(key) is not None]


__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LOCAL_DIR",
    "EVALUATIONS_FILE",
    "LocalTracker",
    "append_line",
    "read_local",
    "read_local_store",
    "read_per_sample",
    "scalar_history",
]
