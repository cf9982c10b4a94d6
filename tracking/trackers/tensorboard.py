"""The TensorBoard backend: event files beside the Trainer's own, no server.

``backend="auto"`` picks it when the Trainer's ``report_to`` holds ``tensorboard``, and it
writes into the folder the Trainer's ``TensorBoardCallback`` writes to, so one TensorBoard
shows the Trainer's curves and tokcal's side by side:

* ``logdir`` when given, else ``TENSORBOARD_LOGGING_DIR``, else the newest run folder under
  ``<output_dir>/runs`` (the Trainer makes ``runs/<date>_<host>`` when training begins),
  else a new ``runs/<date>_<host>`` there. ``<output_dir>`` is the folder that holds the
  local store folder (``local_dir``, ``<output_dir>/tokcal`` by default).

Layout of one run folder::

    events.out.tfevents.*                         the Trainer's and tokcal's event files
    step_000120_eval_bins.json                    labels, reliability bins, notes
    step_000120_eval_per_sample.json              per-sample record (tokcal.core.per_sample)
    step_000120_eval_samples.jsonl                per-sample table, when given
    tokcal_config.json                            the tracking settings

In the event files, at the evaluation's step (tags as the Trainer names them: the first
``_`` of a key becomes ``/``, so ``eval_decision_ece`` is ``eval/decision_ece``):

* every scalar, in double precision (TensorBoard's scalar plugin, new-style summaries);
* the histograms of p(label), decision mass and confidence on their fixed edges
  (``eval/histogram_p_accept`` ...);
* the reliability diagram(s) and histogram figure as images (``eval/decision_reliability`` ...).

TensorBoard's reader drops events whose step goes backwards in one run folder when it meets
a new session start, so evaluations that ``tokcal backfill`` logs (tagged
:data:`~tokcal.trackers.base.MARKER`) go into a sibling folder, ``<run>_tokcal_backfill``,
shown as a run of its own; ``purge_step`` is never used. :meth:`TensorBoardTracker.logged_steps`
and the readers look at both folders.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from tokcal.core.metrics import compute_metrics
    >>> m = compute_metrics(np.array([[0.8, 0.1], [0.3, 0.6]]), np.array([0, 1]), ["Accept", "Reject"])
    >>> with TensorBoardTracker(logdir=tempfile.mkdtemp()) as tracker:  # doctest: +SKIP
    ...     tracker.log_evaluation(m, step=10)
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tokcal.core.metrics import DecisionMetrics, Histogram
from tokcal.core.per_sample import PerSample
from tokcal.core.per_sample import file_name as per_sample_name
from tokcal.errors import TokcalError
from tokcal.io import check_writable
from tokcal.trackers.base import (
    BINS_COLUMNS,
    DEFAULT_LOCAL_DIR,
    FIGURE_SUFFIX,
    Point,
    Series,
    Tracker,
    bins_from_table,
    bins_rows,
    dumps_line,
    finite_scalars,
    is_backfilled,
    metric_prefixes,
    step_name,
    to_jsonable,
    write_atomic,
)

LOGDIR_ENV = "TENSORBOARD_LOGGING_DIR"  # the Trainer's TensorBoardCallback reads it too
BACKFILL_SUFFIX = "_tokcal_backfill"
CONFIG_FILE = "tokcal_config.json"
WRITER_LOCK = ".tokcal-writer.lock"
_EVENTS = "tfevents"
_INSTALL = "the tensorboard backend needs the tensorboard package: pip install -e '.[tensorboard]' in your tokcal clone"


def tag_of(key: str) -> str:
    """A tokcal key as the Trainer's TensorBoard integration names it: the first ``_`` becomes ``/``.

    Example:
        >>> tag_of("eval_decision_ece"), tag_of("eval_holdout_decision_ece")
        ('eval/decision_ece', 'eval/holdout_decision_ece')
    """
    return key.replace("_", "/", 1) if "/" not in key else key


def key_of(tag: str) -> str:
    """The tokcal key back from a tag (:func:`tag_of` reversed).

    Example:
        >>> key_of("eval/decision_ece")
        'eval_decision_ece'
    """
    return tag.replace("/", "_", 1)


def backfill_folder(logdir: str | os.PathLike[str]) -> Path:
    """The sibling run folder that backfilled evaluations go to: ``<run>_tokcal_backfill``.

    Example:
        >>> backfill_folder("out/runs/Dec06_07-00-00_host").as_posix()
        'out/runs/Dec06_07-00-00_host_tokcal_backfill'
    """
    p = Path(logdir)
    return p.parent / f"{p.name}{BACKFILL_SUFFIX}"


def trainer_logdir(runs_root: str | os.PathLike[str]) -> Path:
    """The run folder the Trainer's TensorBoard integration writes to under ``runs_root``
    (``<output_dir>/runs``): ``TENSORBOARD_LOGGING_DIR`` when set, else the run folder with
    the newest event file (the Trainer makes it when training begins), else a new
    ``<date>_<host>`` folder name, as the Trainer names it."""
    given = os.environ.get(LOGDIR_ENV)
    if given:
        return Path(os.path.expanduser(given))
    root = Path(runs_root)
    newest: tuple[float, Path] | None = None
    if root.is_dir():
        for d in root.iterdir():
            if not d.is_dir() or d.name.endswith(BACKFILL_SUFFIX):
                continue
            times = [f.stat().st_mtime for f in d.iterdir() if _EVENTS in f.name and f.is_file()]
            if times and (newest is None or max(times) > newest[0]):
                newest = (max(times), d)
    if newest is not None:
        return newest[1]
    return root / f"{datetime.now().strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}"


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch.utils.tensorboard imports tensorboard
        raise TokcalError(_INSTALL) from exc
    return SummaryWriter


def _accumulator(folder: Path, *, images: bool = False) -> Any:
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError as exc:
        raise TokcalError(_INSTALL) from exc
    guidance = {ea.TENSORS: 0, ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0 if images else 1,
                ea.COMPRESSED_HISTOGRAMS: 1, ea.AUDIO: 1}
    acc = ea.EventAccumulator(str(folder), size_guidance=guidance)
    acc.Reload()
    return acc


class TensorBoardTracker(Tracker):
    """A TensorBoard run folder (and its ``_tokcal_backfill`` sibling for backfilled steps).

    Args:
        logdir: the run folder; see the module's docs for the default.
        run_id: the run folder's name, or its path; attaches to that folder.
        run_name: unused (the folder's name is the run's name in TensorBoard).
        local_dir: the local store folder; ``<its parent>/runs`` holds the run folders.

    Example:
        >>> import tempfile
        >>> TensorBoardTracker(logdir=tempfile.mkdtemp() + "/run1").describe()["run_id"]
        'run1'
    """

    name = "tensorboard"
    options = ("logdir",)
    report_to = "tensorboard"
    source_prefix = "tensorboard:"
    source_form = "tensorboard:RUN_FOLDER"

    def __init__(self, *, logdir: str | os.PathLike[str] | None = None, run_id: str | None = None,
                 run_name: str | None = None, local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR) -> None:
        _summary_writer()  # the install hint before anything is made
        runs_root = Path(local_dir).resolve().parent / "runs"
        if logdir is not None:
            folder = Path(logdir)
        elif run_id is not None:
            folder = Path(run_id) if (os.sep in run_id or Path(run_id).is_dir()) else runs_root / run_id
            if not folder.is_dir():
                raise TokcalError(f"expected an existing TensorBoard run folder for run id {run_id!r}, got none "
                                  f"at {folder}; pass the folder's path as --run-id")
        else:
            folder = trainer_logdir(runs_root)
        if folder.name.endswith(BACKFILL_SUFFIX):
            folder = folder.parent / folder.name[: -len(BACKFILL_SUFFIX)]  # the live run names both folders
        self._dir = folder.resolve()
        self._writers: dict[Path, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, *, run_id: str | None = None, run_name: str | None = None,
             local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR, logdir: str | None = None) -> TensorBoardTracker:
        return cls(logdir=logdir, run_id=run_id, run_name=run_name, local_dir=local_dir)

    @classmethod
    def reopen_kwargs(cls, described: Mapping[str, Any], overrides: Mapping[str, Any], *,
                      where: str = "tokcal.json", default_local_dir: str | None = None) -> dict[str, Any]:
        """The recorded run folder (``logdir``), unless ``--run-id`` names another one."""
        run_id = overrides.get("run_id")
        logdir = overrides.get("logdir") or (None if run_id else described.get("logdir"))
        kw: dict[str, Any] = {"run_id": run_id or described.get("run_id"), "logdir": logdir}
        local_dir = overrides.get("local_dir") or default_local_dir
        if local_dir:
            kw["local_dir"] = str(local_dir)
        return kw

    @classmethod
    def location(cls, described: Mapping[str, Any]) -> str:
        return str(described.get("logdir") or "")

    # -- one run -----------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self._dir.name

    @property
    def directory(self) -> Path:
        """The live run folder (the Trainer's)."""
        return self._dir

    @property
    def backfill_directory(self) -> Path:
        """The sibling folder that backfilled evaluations go to."""
        return backfill_folder(self._dir)

    @property
    def started_run(self) -> bool:
        return False  # a folder has no run state to end

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "run_id": self.run_id, "logdir": str(self._dir)}

    def check_writable(self) -> None:
        check_writable(self._dir.parent, f"the TensorBoard run {self.run_id}")

    def writer_lock(self) -> Path:
        """``<run folder>/.tokcal-writer.lock``: beside the event files, so it follows the folder."""
        return self._dir / WRITER_LOCK

    def log_config(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        self._dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self._dir / CONFIG_FILE, json.dumps(to_jsonable(config), indent=2, allow_nan=False).encode())

    def _writer(self, folder: Path) -> Any:
        with self._lock:
            if folder not in self._writers:
                folder.mkdir(parents=True, exist_ok=True)
                self._writers[folder] = _summary_writer()(log_dir=str(folder))  # never purge_step
            return self._writers[folder]

    def _write_evaluation(self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
                          per_sample: PerSample | None, tags: dict[str, Any]) -> None:
        from tokcal.core.plots import figure_to_array, metric_figures

        folder = self.backfill_directory if is_backfilled(tags) else self._dir
        writer = self._writer(folder)
        prefix = metrics.prefix
        # The files first: a step whose scalars are in the events has its bins and record.
        bins = {"step": step, "labels": list(metrics.labels), "prefix": prefix, "notes": list(metrics.notes),
                "tags": tags, "columns": list(BINS_COLUMNS),
                "rows": [[r[c] for c in BINS_COLUMNS] for r in bins_rows(metrics, step)]}
        write_atomic(folder / f"{step_name(step)}_{prefix}bins.json", dumps_line(bins))
        if per_sample is not None:
            write_atomic(folder / per_sample_name(step, prefix), per_sample.to_json())
        if samples is not None:
            write_atomic(folder / f"{step_name(step)}_{prefix}samples.jsonl",
                         b"".join(dumps_line({"step": step, **row}) for row in samples))
        for key, value in finite_scalars(metrics).items():
            writer.add_scalar(tag_of(key), value, step, new_style=True, double_precision=True)
        for name, hist in metrics.histograms.items():
            _add_histogram(writer, tag_of(f"{prefix}histogram_{name}"), hist, step)
        for fig_name, fig in metric_figures(metrics, step=step).items():
            tag = tag_of(f"{prefix}{FIGURE_SUFFIX.get(fig_name, fig_name)}")
            writer.add_image(tag, figure_to_array(fig), step, dataformats="HWC")
        writer.flush()

    def logged_steps(self, key: str) -> set[int]:
        self.flush()
        tag = tag_of(key)
        steps: set[int] = set()
        for folder in (self._dir, self.backfill_directory):
            if folder.is_dir():
                acc = _accumulator(folder)
                if tag in acc.Tags().get("tensors", []):
                    steps.update(int(e.step) for e in acc.Tensors(tag))
                if tag in acc.Tags().get("scalars", []):
                    steps.update(int(e.step) for e in acc.Scalars(tag))
        return steps

    def flush(self) -> None:
        """Write what the event writers hold to disk."""
        with self._lock:
            for w in self._writers.values():
                w.flush()

    def close(self) -> None:
        with self._lock:
            writers, self._writers = list(self._writers.values()), {}
        for w in writers:
            w.close()

    # -- reading back ------------------------------------------------------------------
    @classmethod
    def read_runs(cls, address: str, overrides: Mapping[str, Any] | None = None) -> list[Series]:
        """A run folder (with its backfill sibling), or a folder of run folders (``runs``)."""
        p = Path(address)
        if not p.is_dir():
            raise TokcalError(f"expected a TensorBoard run folder or a folder of them, got {p} (not a folder)")
        if _has_events(p) or backfill_folder(p).is_dir():
            runs = [p]
        else:
            runs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.endswith(BACKFILL_SUFFIX)
                          and (_has_events(d) or backfill_folder(d).is_dir()))
        out = [s for run in runs for s in read_tensorboard(run)]
        if not out:
            raise TokcalError(f"no tokcal evaluations in the TensorBoard folder {p}; expected a run folder with "
                              "tokcal's event files (e.g. <output_dir>/runs/<run>)")
        return out

    @classmethod
    def read_described(cls, described: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return read_tensorboard(described["logdir"]) if described.get("logdir") else []


def _has_events(folder: Path) -> bool:
    return any(_EVENTS in f.name for f in folder.iterdir()) if folder.is_dir() else False


def _add_histogram(writer: Any, tag: str, hist: Histogram, step: int) -> None:
    """A histogram on its fixed edges: bucket i holds ``(edges[i], edges[i+1]]``. TensorBoard
    also stores a sum and a sum of squares; the counts carry no values, so these use the
    bucket centres (TensorBoard's charts draw from the buckets only)."""
    counts = np.asarray(hist.counts, dtype=float)
    edges = np.asarray(hist.edges, dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2
    writer.add_histogram_raw(tag, min=float(edges[0]), max=float(edges[-1]), num=float(counts.sum()),
                             sum=float((centres * counts).sum()), sum_squares=float((centres ** 2 * counts).sum()),
                             bucket_limits=[float(x) for x in edges[1:]], bucket_counts=[float(c) for c in counts],
                             global_step=step)


def read_tensorboard(logdir: str | os.PathLike[str]) -> list[Series]:
    """The tokcal evaluations of one TensorBoard run folder and its ``_tokcal_backfill``
    sibling, read with TensorBoard's own ``EventAccumulator``: one
    :class:`~tokcal.trackers.base.Series` per metric prefix, backfilled points marked.

    The scalars and histograms come from the event files; labels, reliability bins and the
    per-sample record from the files beside them. A step in both folders counts once (the
    backfilled one).
    """
    live = Path(logdir)
    by_prefix: dict[str, list[Point]] = {}
    for folder, backfilled in ((live, False), (backfill_folder(live), True)):
        if not folder.is_dir():
            continue
        acc = _accumulator(folder)
        tags = acc.Tags()
        values: dict[tuple[str, int], dict[str, float]] = {}
        keys = [key_of(t) for t in tags.get("tensors", [])]
        for prefix in metric_prefixes(keys):
            for tag in tags.get("tensors", []):
                key = key_of(tag)
                if not key.startswith(prefix) or key.startswith(f"{prefix}histogram_"):
                    continue
                for e in acc.Tensors(tag):
                    values.setdefault((prefix, int(e.step)), {})[key] = _tensor_value(e.tensor_proto)
        hists: dict[tuple[str, int], dict[str, Histogram]] = {}
        for tag in tags.get("histograms", []):
            key = key_of(tag)
            for prefix in metric_prefixes(keys):
                if key.startswith(f"{prefix}histogram_"):
                    for e in acc.Histograms(tag):
                        h = e.histogram_value
                        edges = [h.min, *h.bucket_limit]
                        hists.setdefault((prefix, int(e.step)), {})[key[len(f"{prefix}histogram_"):]] = Histogram(
                            np.asarray(edges, dtype=float), np.asarray(h.bucket, dtype=np.int64))
        for (prefix, step), scalars in sorted(values.items(), key=lambda kv: kv[0][1]):
            if f"{prefix}decision_samples" not in scalars:
                continue  # a key of this prefix that is not one of tokcal's evaluations
            extra = _bins_file(folder, step, prefix)
            rows = extra.get("rows", [])
            columns = extra.get("columns", list(BINS_COLUMNS))
            labels = extra.get("labels") or sorted(k[len(prefix) + 6:] for k in scalars if k.startswith(f"{prefix}avg_p_"))
            m = DecisionMetrics(labels, prefix, scalars, bins_from_table(columns, rows, "top_label"),
                                bins_from_table(columns, rows, "positive"), hists.get((prefix, step), {}),
                                list(extra.get("notes", [])))
            record = None
            ps = folder / per_sample_name(step, prefix)
            if ps.is_file():
                record = PerSample.from_json(ps.read_bytes(), where=str(ps))
            by_prefix.setdefault(prefix, []).append(Point(step, m, backfilled, record))
    return [Series.of(f"tensorboard {live.name} · {prefix.rstrip('_')}", points, str(live))
            for prefix, points in sorted(by_prefix.items())]


def _tensor_value(proto: Any) -> float:
    from tensorboard.util import tensor_util

    return float(np.asarray(tensor_util.make_ndarray(proto)).reshape(-1)[0])


def _bins_file(folder: Path, step: int, prefix: str) -> dict[str, Any]:
    path = folder / f"{step_name(step)}_{prefix}bins.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TokcalError(f"{path}: expected the JSON tokcal wrote, got unreadable text ({exc})") from exc
    return data if isinstance(data, dict) else {}


__all__ = ["BACKFILL_SUFFIX", "TensorBoardTracker", "backfill_folder", "key_of", "read_tensorboard", "tag_of",
           "trainer_logdir"]

