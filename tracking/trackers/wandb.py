"""The Weights & Biases backend, following the Hugging Face Trainer's W&B conventions.

* Reuses ``wandb.run`` when the Trainer's integration (or the user) already started it.
* Keys: ``eval_decision_ece`` -> ``eval/decision_ece`` (as ``WandbCallback`` rewrites them).
* Every row carries ``train/global_step``, the x-axis set through
  ``define_metric("eval/*", step_metric="train/global_step")``. ``wandb.log`` is never
  given ``step=``: W&B drops rows whose ``step`` is lower than the run's current one,
  which would lose backfilled points for old checkpoints.
* Per evaluation (``prefix="eval_"``): the scalars that ``scalars`` picks
  (:func:`~tokcal.trackers.base.selected_scalars`), and every scalar in the run file
  ``tokcal/step_000120_eval_scalars.json``; ``eval/decision_hist_<name>`` as
  ``wandb.Histogram`` over the fixed edges; ``eval/decision_reliability`` (and
  ``_positive``, ``eval/decision_histograms``) as ``wandb.Image``; ``eval/decision_bins``
  as a ``wandb.Table`` with a ``step`` column; ``eval/decision_reliability_curve`` and
  ``eval/decision_risk_coverage``: line plots (``wandb.plot.line``) over their tables, so
  one workspace panel overlays the runs; the per-sample record as the run file
  ``tokcal/step_000120_eval_per_sample.json`` (uploaded at once; a ``wandb.Table`` of
  10,000 rows would hold the training thread about 1.5 s); ``eval/decision_sample_table``
  when samples are given; the evaluation's tags as ``eval/tag_<name>`` strings.

W&B cannot resume an offline run (``WANDB_MODE=offline``): ``wandb.init(id=...,
resume="must")`` offline silently starts a second local run with the same id, so this
backend refuses instead. Sync the offline run (``wandb sync <dir>``) and attach online.

The training callback logs to W&B in the calling (training) thread, never in its
background thread (``thread_safe = False``): the run is shared with the Trainer's own
W&B integration, which logs from that thread, and ``run.log`` is not thread-safe. What
costs time stays out of that thread: the run's sections are defined and matplotlib and
pandas imported when the run is opened (train begin), and each row's figures, media and
tables are prepared in a worker thread; the training thread only logs finished rows (at
the next evaluation, at ``close``, or when W&B finishes the run), in step order.

:func:`read_wandb` reads a run's scalars back through the public API (``tokcal report``),
turning the keys back into tokcal's names with :func:`tokcal_key`, the inverse of
:func:`wandb_key`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tokcal.core.metrics import DecisionMetrics
from tokcal.core.per_sample import PerSample
from tokcal.core.per_sample import file_name as per_sample_name
from tokcal.core.spec import label_key
from tokcal.errors import TokcalError, first_line, require
from tokcal.trackers.base import (
    BACKFILL_TAG,
    BINS_COLUMNS,
    FIGURE_SUFFIX,
    Point,
    Series,
    Tracker,
    TrackerDisabled,
    bins_rows,
    finite_scalars,
    labels_from_keys,
    metric_prefixes,
    prefix_of,
    redact,
    redact_all,
    sample_columns,
    selected_scalars,
    step_name,
    to_jsonable,
    write_atomic,
)

logger = logging.getLogger(__name__)

STEP_METRIC = "train/global_step"
RECORD_FOLDER = "tokcal"  # run files: tokcal/step_000120_eval_per_sample.json
_RECORD_FILE = re.compile(r"^tokcal/step_(\d+)_(.*)per_sample\.json$")
_SCALARS_FILE = re.compile(r"^tokcal/step_(\d+)_(.*)scalars\.json$")
_OFFLINE_MODES = ("offline", "dryrun")
_SECTIONS = ("eval", "test")  # the Trainer's prefixes that get a section of their own


def wandb_key(key: str) -> str:
    """The Hugging Face W&B integration's key convention: ``eval_x`` -> ``eval/x``.

    ``eval_`` and ``test_`` keys move under ``eval/`` and ``test/``; other keys under
    ``train/``, as ``transformers.integrations.WandbCallback`` does.

    Example:
        >>> wandb_key("eval_decision_ece"), wandb_key("loss")
        ('eval/decision_ece', 'train/loss')
    """
    for section in _SECTIONS:
        if key.startswith(f"{section}_"):
            return f"{section}/{key[len(section) + 1:]}"
    if "/" in key:
        return key
    return f"train/{key}"


def tokcal_key(key: str) -> str:
    """The inverse of :func:`wandb_key` (for keys without ``/``): ``eval/x`` -> ``eval_x``.

    Example:
        >>> tokcal_key("eval/decision_ece"), tokcal_key("train/loss"), tokcal_key("_step")
        ('eval_decision_ece', 'loss', '_step')
    """
    section, sep, rest = key.partition("/")
    if sep and section in _SECTIONS:
        return f"{section}_{rest}"
    if sep and section == "train" and "/" not in rest:
        return rest
    return key


def _offline(wandb: Any, mode: str | None) -> bool:
    if mode is not None:
        return mode in _OFFLINE_MODES
    if os.environ.get("WANDB_MODE") in _OFFLINE_MODES:
        return True
    return wandb.setup().settings.mode in _OFFLINE_MODES


class WandbTracker(Tracker):
    """Log to a W&B run.

    Args:
        run_id: attach to this existing run (``resume="must"``; online only).
        project, entity: where the run lives (W&B's defaults when ``None``).
        run_name: display name of a new run.
        mode: ``"online"`` / ``"offline"``; ``None`` follows ``WANDB_MODE`` and W&B settings.
        directory: where W&B writes its local files (``wandb.init(dir=...)``).

    Example:
        >>> tracker = WandbTracker(project="my-finetune")  # doctest: +SKIP
        >>> tracker.log_evaluation(metrics, step=120)  # doctest: +SKIP
    """

    name = "wandb"
    options = ("project", "entity", "wandb_mode")
    remote = True
    thread_safe = False
    #: Prepare each row (figures, media, tables) in a worker thread; ``run.log`` stays in
    #: the calling thread. ``False`` prepares and logs in the calling thread.
    threaded: bool = True
    #: Define the sections' x-axis and import what the first row needs when the run is
    #: opened (train begin); ``False`` leaves that to the first evaluation.
    warm_up: bool = True
    report_to = "wandb"
    source_prefix = "wandb:"
    source_form = "wandb:ENTITY/PROJECT/RUN_ID"

    def __init__(
        self,
        *,
        run_id: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        run_name: str | None = None,
        mode: str | None = None,
        directory: str | None = None,
    ) -> None:
        wandb = require("wandb", "wandb")
        self._wandb = wandb
        self._owned = False
        self._closed = False
        current = wandb.run
        if current is not None:
            if run_id is not None and current.id != run_id:
                raise TokcalError(
                    f"expected W&B run {run_id!r}, got run {current.id!r} already active in this process; "
                    "finish it first, or leave run_id unset to log into it"
                )
            self._run = current
        elif run_id is not None:
            if _offline(wandb, mode):
                raise TokcalError(
                    f"W&B cannot resume an offline run: expected WANDB_MODE=online to attach to run {run_id!r}, "
                    "got offline. Upload the offline run with 'wandb sync <its folder>', then attach online; "
                    "or log to a new run"
                )
            try:
                self._run = wandb.init(
                    id=run_id, project=project, entity=entity, resume="must", mode=mode, dir=directory
                )
            except wandb.errors.Error as exc:
                where = "/".join(x for x in (entity, project) if x) or "the default project"
                raise TokcalError(f"could not attach to W&B run {run_id!r} in {where}: {redact(str(exc))}") from exc
            self._owned = True
        else:
            self._run = wandb.init(project=project, entity=entity, name=run_name, mode=mode, dir=directory)
            self._owned = True
        if getattr(self._run, "disabled", False):  # WANDB_MODE=disabled: a run that keeps nothing
            if self._owned:
                self._run.finish()
            raise TrackerDisabled("W&B is disabled (WANDB_MODE=disabled), so nothing logged to it would be kept")
        self._run.define_metric(STEP_METRIC)
        self._sections: set[str] = set()
        # What the first evaluation would otherwise pay in the training thread, paid here
        # (train begin): the x-axis of the Trainer's sections, and the first use of
        # matplotlib, PIL and pandas (wandb.Table looks for it).
        if self.warm_up:
            for section in _SECTIONS:
                self._define(f"{section}/")
            _warm_up(wandb)
        self._files_dir = Path(self._run.dir)
        self._worker: Any = None  # prepares rows off the training thread
        self._preparing: list[tuple[int, Any]] = []  # (step, future of (row, run files)), in order
        self._hooked = _on_finish(self._run, self.flush)

    @classmethod
    def open(
        cls, *, run_id: str | None = None, run_name: str | None = None, local_dir: Any = None,
        wandb_mode: str | None = None, **options: Any,
    ) -> "WandbTracker":
        return cls(run_id=run_id, run_name=run_name, mode=wandb_mode, **options)

    @classmethod
    def location(cls, described: Mapping[str, Any]) -> str:
        return str(described.get("project") or "")

    @classmethod
    def read_runs(cls, address: str, overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return read_wandb(address)

    @classmethod
    def read_described(cls, described: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return read_wandb(f"{described.get('entity')}/{described.get('project')}/{described['run_id']}")

    @property
    def run(self) -> Any:
        """The ``wandb`` run object."""
        return self._run

    @property
    def started_run(self) -> bool:
        return self._owned

    def viewer(self) -> str:
        """The run's URL, or for an offline run the command that uploads it."""
        if self.offline:
            return f"offline; upload with: wandb sync {Path(self._run.dir).parent}"
        return redact(str(self._run.url or ""))

    @property
    def run_id(self) -> str:
        return self._run.id

    @property
    def offline(self) -> bool:
        return bool(self._run.offline)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "run_id": self._run.id,
            "project": self._run.project,
            "entity": self._run.entity or None,
            "mode": "offline" if self.offline else "online",
            "url": None if self.offline else self._run.url,
            "local_dir": str(self._run.settings.sync_dir),
        }

    def log_config(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        self._run.config.update({"tokcal": redact_all(to_jsonable(config))}, allow_val_change=True)

    def _define(self, key: str) -> None:
        section = key.split("/", 1)[0]
        if section not in self._sections:
            self._run.define_metric(f"{section}/*", step_metric=STEP_METRIC)
            self._sections.add(section)

    def _write_evaluation(
        self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
        per_sample: PerSample | None, tags: dict[str, Any], scalars: str | tuple[str, ...] = "all",
    ) -> None:
        """Hand the evaluation's row to the worker thread, which draws the figures and
        builds the media and tables; log the rows it has finished since the last call.

        W&B's ``run.log`` is not safe to call from another thread (it numbers and sends
        rows without a lock, and the Trainer's own W&B integration logs from the training
        thread), so only the preparation leaves the calling thread: a row is logged here,
        at the next evaluation, or by :meth:`flush` (``close``, and before W&B finishes the
        run), always in step order. Without a worker (``threaded=False``) the row is
        prepared and logged now.
        """
        self._log_ready()
        if not self.threaded:
            row, files = self._prepare(metrics, step, samples, per_sample, tags, scalars)
            self._log_row(step, row, files)
            return
        if self._worker is None:
            from concurrent.futures import ThreadPoolExecutor

            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokcal-wandb")
        self._preparing.append((step, self._worker.submit(self._prepare, metrics, step, samples, per_sample, tags,
                                                                scalars)))

    def flush(self) -> None:
        """Wait for the rows being prepared and log them (in the calling thread)."""
        self._log_ready(wait=True)

    def _log_ready(self, wait: bool = False) -> None:
        while self._preparing and (wait or self._preparing[0][1].done()):
            step, future = self._preparing.pop(0)
            try:
                row, files = future.result()
            except Exception as exc:  # deliberate: said here; the training goes on
                logger.warning("tokcal: the W&B row of step %s could not be prepared (%s); it is not logged",
                               step, first_line(exc, with_type=True))
                continue
            self._log_row(step, row, files)

    def _log_row(self, step: int, row: dict[str, Any], files: list[Path]) -> None:
        for path in files:  # run files, uploaded now (online) or by wandb sync (offline)
            self._run.save(str(path), base_path=str(self._files_dir), policy="now")
        for key in row:
            self._define(key)
        row[STEP_METRIC] = step
        self._run.log(row)  # no step=: W&B would drop steps lower than the current one

    def _prepare(
        self, metrics: DecisionMetrics, step: int, samples: list[dict[str, Any]] | None,
        per_sample: PerSample | None, tags: dict[str, Any], scalars: str | tuple[str, ...] = "all",
    ) -> tuple[dict[str, Any], list[Path]]:
        """One evaluation's row (the charted ``scalars`` and the media) and its run files
        (every scalar, the per-sample record), written but not saved: makes no call into the run."""
        from tokcal.core.plots import figure_to_array, metric_figures

        wandb = self._wandb
        p = metrics.prefix
        row: dict[str, Any] = {wandb_key(k): v for k, v in selected_scalars(metrics, scalars).items()}
        files = [write_atomic(self._files_dir / RECORD_FOLDER / f"{step_name(step)}_{p}scalars.json",
                              json.dumps(finite_scalars(metrics), sort_keys=True).encode("utf-8"))]
        for name, hist in metrics.histograms.items():
            row[wandb_key(f"{p}decision_hist_{name}")] = wandb.Histogram(
                np_histogram=(hist.counts.tolist(), hist.edges.tolist())
            )
        for fig_name, fig in metric_figures(metrics, step=step).items():
            key = wandb_key(f"{p}{FIGURE_SUFFIX.get(fig_name, fig_name)}")
            row[key] = wandb.Image(figure_to_array(fig), caption=f"step {step}")
        rows = bins_rows(metrics, step)
        if rows:
            row[wandb_key(f"{p}decision_bins")] = wandb.Table(
                columns=list(BINS_COLUMNS), data=[[r[c] for c in BINS_COLUMNS] for r in rows]
            )
        row.update(_curves(wandb, metrics))
        if per_sample is not None:  # a run file under tokcal/
            files.append(write_atomic(self._files_dir / RECORD_FOLDER / per_sample_name(step, p), per_sample.to_json()))
        if samples is not None:
            cols = sample_columns(samples)
            data = [[step if c == "step" else to_jsonable(s.get(c)) for c in cols] for s in samples]
            row[wandb_key(f"{p}decision_sample_table")] = wandb.Table(columns=cols, data=data)
        for k, v in tags.items():
            row[wandb_key(f"{p}tag_{k}")] = str(v)
        return row, files

    def logged_steps(self, key: str) -> set[int]:
        """Values of ``train/global_step`` in rows that hold ``key``, read through the
        public API. Offline runs cannot be queried: this returns an empty set for them
        (and an offline run cannot be attached to for a replay in the first place)."""
        if self.offline:
            logger.debug("logged_steps(%r): not available for an offline W&B run", key)
            return set()
        wkey = wandb_key(key)
        path = "/".join(x for x in (self._run.entity, self._run.project, self._run.id) if x)
        api_run = self._wandb.Api().run(path)
        return {
            int(r[STEP_METRIC])
            for r in api_run.scan_history(keys=[wkey, STEP_METRIC])
            if r.get(wkey) is not None and r.get(STEP_METRIC) is not None
        }

    def close(self) -> None:
        """Log the rows still being prepared, then finish the run if this tracker started
        it (the Trainer finishes its own)."""
        self._end(None)

    def close_failed(self) -> None:
        """As :meth:`close`, finishing the run as failed (exit code 1)."""
        self._end(1)

    def _end(self, exit_code: int | None) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
            if self._owned:
                self._run.finish() if exit_code is None else self._run.finish(exit_code=exit_code)
            self._closed = True


def _warm_up(wandb: Any) -> None:
    """Import what the first row needs (matplotlib through tokcal's plots, PIL, pandas,
    W&B's chart presets) so that the first evaluation does not pay for it."""
    import tokcal.core.plots  # noqa: F401  (matplotlib)

    wandb.Table(columns=["x"], data=[[0.0]])  # W&B looks for pandas on its first table
    _ = wandb.plot.line


def _on_finish(run: Any, flush: Any) -> bool:
    """Have W&B log the rows still being prepared before it finishes ``run``, whoever
    finishes it (``wandb.finish()``, the Trainer, the end of the process). W&B has no
    public hook for this; without its teardown hooks (another W&B version) ``close``
    still does it, and this says ``False``."""
    try:
        from wandb.sdk.wandb_run import TeardownHook, TeardownStage
    except ImportError:
        return False
    hooks = getattr(run, "_teardown_hooks", None)
    if not isinstance(hooks, list):
        return False
    hooks.append(TeardownHook(flush, TeardownStage.EARLY))
    return True


def _curves(wandb: Any, metrics: DecisionMetrics) -> dict[str, Any]:
    """The reliability curve (non-empty bins) and the risk-coverage curve as line plots.

    W&B keeps each plot's table as ``<key>_table`` in the row and its chart in the run
    config; the chart reads the latest table of every run in the workspace (``runSets``),
    so one panel overlays the runs."""
    p, out = metrics.prefix, {}
    bins = metrics.reliability
    if bins is not None and bins.counts.sum():
        keep = bins.counts > 0
        data = [[float(c), float(a), int(n)] for c, a, n in
                zip(bins.confidence[keep], bins.accuracy[keep], bins.counts[keep])]
        table = wandb.Table(columns=["confidence", "accuracy", "count"], data=data)
        out[wandb_key(f"{p}decision_reliability_curve")] = wandb.plot.line(
            table, "confidence", "accuracy", title=f"Reliability ({p.rstrip('_')})")
    rc = metrics.risk_coverage
    if rc is not None and len(rc.coverage):
        keep = np.isfinite(rc.risk)
        data = [[float(c), float(r)] for c, r in zip(rc.coverage[keep], rc.risk[keep])]
        table = wandb.Table(columns=["coverage", "risk"], data=data)
        out[wandb_key(f"{p}decision_risk_coverage")] = wandb.plot.line(
            table, "coverage", "risk", title=f"Risk vs coverage ({p.rstrip('_')})")
    return out


# ------------------------------------------------------------------------ reading back


def read_wandb(path: str) -> list[Series]:
    """A W&B run ``entity/project/run_id`` through ``wandb.Api`` (needs the network and a
    login). Only the scalars are read: the reliability diagrams and histograms stay in W&B.

    Raises:
        TokcalError: offline, not logged in, or the run cannot be read.

    Example:
        >>> series = read_wandb("my-team/my-finetune/3x7kq2a1")  # doctest: +SKIP
    """
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        raise TokcalError(
            f"W&B runs are read through the W&B service, which WANDB_MODE={os.environ['WANDB_MODE']} turns off; "
            "report on an offline run by syncing it first (wandb sync), or pass its local store or "
            "extract JSONL files instead"
        )
    wandb = require("wandb", "wandb")
    if path.count("/") != 2:
        raise TokcalError(f"expected a W&B run as wandb:ENTITY/PROJECT/RUN_ID, got wandb:{path}")
    try:
        run = wandb.Api(timeout=30).run(path)
        rows = list(run.scan_history())
    except Exception as exc:  # no network, no login, no such run
        raise TokcalError(f"could not read W&B run {path} (reading W&B needs the network and "
                          f"'wandb login'): {first_line(exc)}") from exc
    merged: dict[int, dict[str, float]] = {}  # step -> tokcal's names (eval/x -> eval_x)
    flags: set[tuple[str, int]] = set()  # (prefix, step) of backfilled rows
    tag = f"tag_{BACKFILL_TAG}"
    for row in rows:
        step = row.get(STEP_METRIC)
        if step is None:
            continue
        for k, v in row.items():
            if "/" not in k or k == STEP_METRIC:
                continue
            key = tokcal_key(k)
            if key.endswith(tag) and str(v) == "true":
                flags.add((key[: -len(tag)], int(step)))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                merged.setdefault(int(step), {})[key] = float(v)
    prefixes = metric_prefixes({k for s in merged.values() for k in s})
    if not prefixes:
        raise TokcalError(f"W&B run {path} has no tokcal metrics (no 'eval/*decision_samples' key)")
    recorded = _config_labels(getattr(run, "config", None) or {})
    files, scalar_files = _record_files(run)
    out = []
    for prefix in prefixes:
        points = []
        for step, values in sorted(merged.items()):
            mine = {k: v for k, v in values.items() if prefix_of(k, prefixes) == prefix}
            if f"{prefix}decision_samples" in mine:
                if (prefix, step) in scalar_files:  # the scalars not logged as charts
                    mine = {**_download_scalars(run, scalar_files[(prefix, step)]), **mine}
                labels = labels_from_keys(mine, prefix)
                if recorded and sorted(label_key(x) for x in recorded) == sorted(labels):
                    labels = list(recorded)  # the spec's order (positive first) and spelling
                file = files.get((prefix, step))
                record = _download_record(run, file) if file else None
                points.append(Point(step, DecisionMetrics(labels, prefix, mine, None), (prefix, step) in flags, record))
        out.append(Series.of(f"wandb {run.name or path} · {prefix.rstrip('_')}", points, f"wandb:{path}",
                             ["reliability diagrams and histograms of W&B runs are in the W&B UI only"]))
    return out


def _record_files(run: Any) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]]:
    """(prefix, step) -> name of each per-sample record, and of each scalars file, among
    an online run's files."""
    try:
        names = [f.name for f in run.files()]
    except Exception as exc:  # no network, no permission
        raise TokcalError(f"could not list the files of W&B run {run.id}: {first_line(exc)}") from exc
    return ({(m.group(2), int(m.group(1))): n for n in names if (m := _RECORD_FILE.match(n))},
            {(m.group(2), int(m.group(1))): n for n in names if (m := _SCALARS_FILE.match(n))})


def _download_scalars(run: Any, name: str) -> dict[str, float]:
    """Every scalar of one evaluation, from its ``tokcal/step_*_<prefix>scalars.json`` file."""
    data = _download(run, name)
    try:
        values = json.loads(data)
        return {str(k): float(v) for k, v in values.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise TokcalError(f"W&B run {run.id}: expected {name} to hold a JSON object of numbers, got "
                          f"{first_line(exc)}") from exc


def _download_record(run: Any, name: str) -> PerSample:
    """One per-sample record file of an online run, through the public API."""
    return PerSample.from_json(_download(run, name), where=f"W&B run {run.id}: {name}")


def _download(run: Any, name: str) -> bytes:
    """One run file of an online run, through the public API."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tokcal-wandb-") as tmp:
        try:
            run.file(name).download(root=tmp, replace=True).close()
            return (Path(tmp) / name).read_bytes()
        except Exception as exc:  # no network, file gone
            raise TokcalError(f"could not read {name} of W&B run {run.id}: {first_line(exc)}") from exc


def _config_labels(config: Any) -> list[str] | None:
    """The spec's labels in a W&B run config, as :meth:`WandbTracker.log_config` stores the
    settings (``tokcal: {[tokcal:] {spec: {labels}}}``)."""
    node = config.get("tokcal") if isinstance(config, dict) else None
    for _ in range(3):
        if not isinstance(node, dict):
            return None
        spec = node.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("labels"), list):
            return [str(x) for x in spec["labels"]]
        node = node.get("tokcal")
    return None
