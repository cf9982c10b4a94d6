"""Reports: decision metrics over training steps, from any place tokcal logged them.

Readers turn a source into :class:`Series` (one per run and metric prefix), each a list of
:class:`Point` (a step and its :class:`~tracking.core.metrics.DecisionMetrics`):

* :func:`read_local` - a local store (a run folder, or a folder of run folders);
* :func:`read_mlflow` - an MLflow run: the scalars' histories plus the bins artifacts;
* :func:`read_wandb` - a W&B run through the public API (online only; scalars only);
* :func:`read_extract` - ``tokcal extract``/``backfill`` JSONL files, one per step;
* :func:`read_source` - any of these from a command-line word.

:func:`write_report` then draws the evolution over steps (series overlaid), each step's
reliability diagram and histograms, and writes one self-contained HTML file plus the PNGs.

Example:
    >>> series = read_source("mlflow:4f0c2b...", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> write_report(series, "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tracking.core.metrics import (
    DecisionMetrics,
    Histogram,
    ReliabilityBins,
    compute_metrics,
)
from tracking.core.spec import label_key
from tracking.errors import TokcalError

log = logging.getLogger(__name__)

BACKFILL_TAG = "tokcal_backfill"  # tracking.jobs.backfill.MARKER's key
_TOKCAL_NAME = re.compile(r"^(decision_|avg_p_)")


@dataclass
class Point:
    """One evaluation: its step, metrics and whether backfill logged it."""

    step: int
    metrics: DecisionMetrics
    backfilled: bool = False

    def scalar(self, name: str) -> float:
        """``name`` without prefix (``decision_ece``); NaN when absent."""
        v = self.metrics.scalars.get(f"{self.metrics.prefix}{name}")
        return math.nan if v is None else float(v)


@dataclass
class Series:
    """The evaluations of one run under one metric prefix, in step order."""

    name: str
    points: list[Point]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return self.points[0].metrics.labels if self.points else []

    @property
    def steps(self) -> list[int]:
        return [p.step for p in self.points]


def _finish(name: str, points: Iterable[Point], source: str, notes: Sequence[str] = ()) -> Series:
    by_step: dict[int, Point] = {}
    for p in points:  # a step logged twice (re-scored, --force) counts once: the last one
        by_step[p.step] = p
    return Series(name, [by_step[s] for s in sorted(by_step)], source, list(notes))


# ------------------------------------------------------------------------------- local


def read_local(path: str | os.PathLike[str]) -> list[Series]:
    """A local run folder (``evaluations.jsonl`` inside), or a folder of run folders.

    Raises:
        TokcalError: no evaluations found under ``path``.
    """
    from tracking.trackers.local import EVALUATIONS_FILE, read_local_store

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
            tags = rec.get("tags") or {}
            by_prefix.setdefault(m.prefix, []).append(Point(int(rec["step"]), m, str(tags.get(BACKFILL_TAG)) == "true"))
        for prefix, points in sorted(by_prefix.items()):
            out.append(_finish(f"local {run_dir.name} · {prefix.rstrip('_')}", points, str(run_dir)))
    return out


# ------------------------------------------------------------------------------ mlflow


def _prefixes(keys: Iterable[str]) -> list[str]:
    """Metric prefixes (``eval_``, ``eval_holdout_``) from the ``*decision_samples`` keys."""
    return sorted({k[: -len("decision_samples")] for k in keys if k.endswith("decision_samples")})


def _owner(key: str, prefixes: Sequence[str]) -> str | None:
    """The longest prefix whose tokcal metrics include ``key`` (``eval_loss`` has none)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix) and _TOKCAL_NAME.match(key[len(prefix):]):
            return prefix
    return None


def _labels_from_keys(scalars: Iterable[str], prefix: str) -> list[str]:
    """Label keys from ``<prefix>avg_p_<key>`` names (sorted: the order is not recorded)."""
    return sorted(k[len(prefix) + len("avg_p_"):] for k in scalars if k.startswith(f"{prefix}avg_p_"))


def _bins_from_table(table: dict[str, Any], curve: str) -> ReliabilityBins | None:
    cols = table.get("columns") or []
    rows = [dict(zip(cols, r)) for r in table.get("data") or [] if dict(zip(cols, r)).get("curve") == curve]
    if not rows:
        return None
    rows.sort(key=lambda r: r["bin"])
    edges = [rows[0]["lower"]] + [r["upper"] for r in rows]
    return ReliabilityBins.from_dict({"edges": edges, "counts": [r["count"] for r in rows],
                                      "confidence": [r["confidence"] for r in rows],
                                      "accuracy": [r["accuracy"] for r in rows]})


def read_mlflow(run_id: str, tracking_uri: str | None = None) -> list[Series]:
    """An MLflow run: one series per metric prefix that tokcal logged into it.

    Scalars come from the metric histories; reliability bins, histograms and the backfill
    marker from the ``tokcal/<prefix>/bins_step_*.json`` artifacts.

    Raises:
        TokcalError: the run cannot be opened or holds no tokcal metrics.
    """
    from tracking.errors import require
    from tracking.trackers.base import redact
    from tracking.trackers.mlflow import artifact_folder

    mlflow = require("mlflow", "mlflow")
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    where = redact(tracking_uri or mlflow.get_tracking_uri())
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TokcalError(f"could not open MLflow run {run_id!r} at {where}: {str(exc).splitlines()[0][:200]}") from exc
    keys = list(run.data.metrics)
    prefixes = _prefixes(keys)
    if not prefixes:
        raise TokcalError(f"MLflow run {run_id} at {where} has no tokcal metrics (no '*decision_samples' key)")
    name = run.info.run_name or run_id[:8]
    out = []
    with tempfile.TemporaryDirectory(prefix="tokcal-report-") as tmp:
        for prefix in prefixes:
            scalars: dict[int, dict[str, float]] = {}
            for key in keys:
                if _owner(key, prefixes) == prefix:
                    for m in client.get_metric_history(run_id, key):
                        scalars.setdefault(int(m.step), {})[key] = float(m.value)
            tables: dict[int, dict[str, Any]] = {}
            folder = artifact_folder(prefix)
            try:
                listed = [f.path for f in client.list_artifacts(run_id, folder)]
            except MlflowException:
                listed = []
            wanted = [f for f in listed if re.search(r"/bins_step_\d+\.json$", f)]
            if wanted:
                with _no_progress_bar():
                    local = Path(client.download_artifacts(run_id, folder, tmp))
                for f in wanted:
                    table = json.loads((local / Path(f).name).read_text(encoding="utf-8"))
                    tables[int(table["step"])] = table
            points = []
            for step in sorted(scalars):
                table = tables.get(step, {})
                labels = table.get("labels") or _labels_from_keys(scalars[step], prefix)
                metrics = DecisionMetrics(
                    labels=list(labels), prefix=prefix, scalars=scalars[step],
                    reliability=_bins_from_table(table, "top_label"),
                    positive_reliability=_bins_from_table(table, "positive"),
                    histograms={k: Histogram.from_dict(h) for k, h in (table.get("histograms") or {}).items()},
                    notes=list(table.get("notes") or []),
                )
                backfilled = str((table.get("tags") or {}).get(BACKFILL_TAG)) == "true"
                points.append(Point(step, metrics, backfilled))
            out.append(_finish(f"mlflow {name} · {prefix.rstrip('_')}", points, f"mlflow:{run_id} at {where}"))
    return out


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


# ------------------------------------------------------------------------------- wandb


def read_wandb(path: str) -> list[Series]:
    """A W&B run ``entity/project/run_id`` through ``wandb.Api`` (needs the network and a
    login). Only the scalars are read: the reliability diagrams and histograms stay in W&B.

    Raises:
        TokcalError: offline, not logged in, or the run cannot be read.
    """
    from tracking.errors import require

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
                          f"'wandb login'): {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
    merged: dict[int, dict[str, float]] = {}  # step -> tokcal's names (eval/x -> eval_x)
    flags: set[tuple[str, int]] = set()  # (prefix, step) of backfilled rows
    for row in rows:
        step = row.get("train/global_step")
        if step is None:
            continue
        for k, v in row.items():
            if not k.startswith("eval/"):
                continue
            key = "eval_" + k[len("eval/"):]
            if key.endswith(f"tag_{BACKFILL_TAG}") and str(v) == "true":
                flags.add((key[: -len(f"tag_{BACKFILL_TAG}")], int(step)))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                merged.setdefault(int(step), {})[key] = float(v)
    prefixes = _prefixes({k for s in merged.values() for k in s})
    if not prefixes:
        raise TokcalError(f"W&B run {path} has no tokcal metrics (no 'eval/*decision_samples' key)")
    recorded = _config_labels(getattr(run, "config", None) or {})
    out = []
    for prefix in prefixes:
        points = []
        for step, values in sorted(merged.items()):
            mine = {k: v for k, v in values.items() if _owner(k, prefixes) == prefix}
            if f"{prefix}decision_samples" in mine:
                labels = _labels_from_keys(mine, prefix)
                if recorded and sorted(label_key(x) for x in recorded) == sorted(labels):
                    labels = list(recorded)  # the spec's order (positive first) and spelling
                m = DecisionMetrics(labels, prefix, mine, None)
                points.append(Point(step, m, (prefix, step) in flags))
        out.append(_finish(f"wandb {run.name or path} · {prefix.rstrip('_')}", points, f"wandb:{path}",
                           ["reliability diagrams and histograms of W&B runs are in the W&B UI only"]))
    return out


def _config_labels(config: Any) -> list[str] | None:
    """The spec's labels in a W&B run config (``tokcal: {[tokcal:] {spec: {labels}}}``)."""
    node = config.get("tokcal") if isinstance(config, dict) else None
    for _ in range(3):
        if not isinstance(node, dict):
            return None
        spec = node.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("labels"), list):
            return [str(x) for x in spec["labels"]]
        node = node.get("tokcal")
    return None


# ----------------------------------------------------------------------------- extract


def step_from_name(path: str | os.PathLike[str]) -> int | None:
    """The step in ``checkpoint-120.decisions.jsonl``, ``step_120.jsonl`` or
    ``checkpoint-120/tokcal_decisions.jsonl``: the last number in the file name, else a
    parent folder named ``checkpoint-N`` (or ``step-N``, ``step_N``).

    Example:
        >>> step_from_name("out/checkpoint-120/tokcal_decisions.jsonl"), step_from_name("s_7.jsonl")
        (120, 7)
    """
    p = Path(path)
    found = re.findall(r"\d+", p.name.split(".")[0])
    if found:
        return int(found[-1])
    parent = re.fullmatch(r"(?:checkpoint|step)[-_](\d+)", p.parent.name)
    return int(parent.group(1)) if parent else None


def extract_metrics(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None, *,
                    n_bins: int = 15, where: str = "extract") -> DecisionMetrics:
    """Metrics recomputed from ``tokcal extract`` lines (``p_<label>``, ``gt`` ...)."""
    if not rows:
        raise TokcalError(f"{where} has no decisions")
    keys = [k[2:] for k in rows[0] if k.startswith("p_")]
    if labels is None:
        names = {label_key(str(r[c])): str(r[c]) for r in rows for c in ("gt", "pred") if r.get(c) is not None}
        labels = [names.get(k, k) for k in keys]
    lk = [label_key(x) for x in labels]
    if sorted(lk) != sorted(keys):
        raise TokcalError(f"{where}: expected p_ columns for labels {list(labels)}, got p_{', p_'.join(keys)}")
    probs = np.array([[float(r[f"p_{k}"]) for k in lk] for r in rows], dtype=np.float64)
    try:
        gt = np.array([lk.index(label_key(str(r["gt"]))) for r in rows])
    except (KeyError, ValueError) as exc:
        raise TokcalError(f"{where}: every line needs 'gt', one of {list(labels)}") from exc
    return compute_metrics(probs, gt, list(labels), n_bins=n_bins)


def read_extract(files: Sequence[str | os.PathLike[str]], steps: Sequence[int] | None = None, *,
                 labels: Sequence[str] | None = None, name: str = "extract", n_bins: int = 15) -> Series:
    """``tokcal extract`` JSONL files, one per step, as one series.

    Args:
        files: the JSONL files.
        steps: the step of each file; default: read off each file name (:func:`step_from_name`).
        labels: the labels, positive first; default: the ``p_`` columns, named as in ``gt``.

    Raises:
        TokcalError: a file cannot be read, a step cannot be told, or two files share one.
    """
    from tracking.data.records import read_records

    files = [Path(f) for f in files]
    if steps is not None and len(steps) != len(files):
        raise TokcalError(f"expected one --steps value per extract file ({len(files)}), got {len(steps)}")
    points, seen = [], {}
    for i, f in enumerate(files):
        step = steps[i] if steps is not None else step_from_name(f)
        if step is None:
            raise TokcalError(f"cannot tell the step of {f} from its name; pass --steps, one per file")
        if step in seen:
            raise TokcalError(f"{seen[step]} and {f} are both step {step}; pass --steps")
        seen[step] = f
        points.append(Point(int(step), extract_metrics(read_records(f), labels, n_bins=n_bins, where=str(f))))
    return _finish(name, points, ", ".join(map(str, files)))


# ------------------------------------------------------------------------------ source


def read_source(source: str, *, tracking_uri: str | None = None) -> list[Series]:
    """Series from a command-line word (not extract files; see :func:`read_sources`):

    * ``mlflow:RUN_ID`` or a bare 32-hex MLflow run id (store: ``tracking_uri``);
    * ``wandb:ENTITY/PROJECT/RUN_ID``;
    * a folder with ``tokcal.json`` (a training output folder): the runs it records;
    * a local store folder (a run, or a folder of runs).
    """
    if source.startswith("mlflow:"):
        return read_mlflow(source[len("mlflow:"):], tracking_uri)
    if source.startswith("wandb:"):
        return read_wandb(source[len("wandb:"):])
    p = Path(source)
    if p.is_dir() and (p / "tokcal.json").is_file():
        return _from_state(p, tracking_uri)
    if p.exists():
        return read_local(p)
    if re.fullmatch(r"[0-9a-f]{32}", source):
        return read_mlflow(source, tracking_uri)
    raise TokcalError(f"report source not found: {source!r}; expected mlflow:RUN_ID, wandb:ENTITY/PROJECT/RUN_ID, "
                      "a local store folder, a training output folder with tokcal.json, or extract .jsonl files")


def _from_state(folder: Path, tracking_uri: str | None) -> list[Series]:
    state = json.loads((folder / "tokcal.json").read_text(encoding="utf-8"))
    out: list[Series] = []
    for t in state.get("trackers") or []:
        if t.get("backend") == "mlflow":
            out += read_mlflow(t["run_id"], tracking_uri or t.get("tracking_uri"))
        elif t.get("backend") == "wandb":
            out += read_wandb(f"{t.get('entity')}/{t.get('project')}/{t['run_id']}")
        elif t.get("backend") == "local" and t.get("local_dir"):
            out += read_local(t["local_dir"])
    if not out:
        raise TokcalError(f"{folder}/tokcal.json records no run to report on")
    return out


def read_sources(sources: Sequence[str], *, tracking_uri: str | None = None, steps: Sequence[int] | None = None,
                 labels: Sequence[str] | None = None) -> list[Series]:
    """Every source's series; all ``.jsonl`` files together form one extract series."""
    extract = [s for s in sources if s.endswith(".jsonl") and Path(s).is_file()]
    out: list[Series] = []
    for s in sources:
        if s not in extract:
            out += read_source(s, tracking_uri=tracking_uri)
    if extract:
        out.append(read_extract(extract, steps, labels=labels))
    elif steps is not None:
        raise TokcalError("--steps applies to extract .jsonl files; none were given")
    for s in out:
        if not s.points:
            raise TokcalError(f"{s.name} has no evaluations")
    return out


from tracking.jobs.report_html import write_report

__all__ = ["Point", "Series", "extract_metrics", "read_extract", "read_local", "read_mlflow", "read_source",
           "read_sources", "read_wandb", "step_from_name", "write_report"]
