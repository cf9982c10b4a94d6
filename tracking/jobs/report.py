"""Reports: decision metrics over training steps, from any place tokcal logged them.

Readers turn a source into :class:`~tokcal.trackers.base.Series` (one per run and
metric prefix), each a list of :class:`~tokcal.trackers.base.Point` (a step and its
:class:`~tokcal.core.metrics.DecisionMetrics`). Each backend reads its own runs back
(:meth:`~tokcal.trackers.base.Tracker.read_runs`): :func:`read_local`,
:func:`read_mlflow` and :func:`read_wandb` are theirs. This module adds:

* :func:`read_extract` - ``tokcal extract``/``backfill`` JSONL files, one per step;
* :func:`read_source` - any backend's runs from a command-line word, or the runs a
  training output folder's ``tokcal.json`` records.

:func:`write_report` then draws the evolution over steps (series overlaid), each step's
reliability diagram and histograms, and writes one self-contained HTML file plus the PNGs.

Example:
    >>> series = read_source("mlflow:4f0c2b...", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> write_report(series, "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokcal.core.metrics import DecisionMetrics, compute_metrics
from tokcal.core.per_sample import PerSample
from tokcal.core.spec import label_key
from tokcal.errors import TokcalError
from tokcal.jobs.report_html import write_report
from tokcal.trackers.base import (
    BACKFILL_TAG,
    Point,
    Series,
    backend_class,
    backend_names,
)
from tokcal.trackers.local import read_local
from tokcal.trackers.mlflow import read_mlflow
from tokcal.trackers.wandb import read_wandb

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


def extract_arrays(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None, *,
                   where: str = "extract") -> tuple[list[str], np.ndarray, np.ndarray]:
    """The labels, (N, K) probabilities and (N,) true label indices of ``tokcal extract``
    lines (``p_<label>``, ``gt`` ...); ``labels`` default to the ``p_`` columns, named as in ``gt``."""
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
    return list(labels), probs, gt


def extract_metrics(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None, *,
                    n_bins: int = 15, where: str = "extract") -> DecisionMetrics:
    """Metrics recomputed from ``tokcal extract`` lines (``p_<label>``, ``gt`` ...)."""
    names, probs, gt = extract_arrays(rows, labels, where=where)
    return compute_metrics(probs, gt, names, n_bins=n_bins)


def extract_per_sample(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None, *,
                       where: str = "extract") -> PerSample | None:
    """The per-sample record of ``tokcal extract``/``backfill`` lines that carry ``index``
    (older files without it: ``None``)."""
    return _per_sample_of(rows, *extract_arrays(rows, labels, where=where))


def _per_sample_of(rows: Sequence[dict[str, Any]], labels: list[str], probs: np.ndarray,
                   gt: np.ndarray) -> PerSample | None:
    if any("index" not in r for r in rows):
        return None
    ids = [r.get("sample_id") for r in rows]
    index = [int(r["index"]) for r in rows]
    return PerSample(labels, index, gt, probs, [int(r.get("turn", 0)) for r in rows], None if ids == index else ids)


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
    from tokcal.data.records import read_records

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
        rows = read_records(f)
        names, probs, gt = extract_arrays(rows, labels, where=str(f))  # parsed once for both
        points.append(Point(int(step), compute_metrics(probs, gt, names, n_bins=n_bins),
                            per_sample=_per_sample_of(rows, names, probs, gt)))
    return Series.of(name, points, ", ".join(map(str, files)))


# ------------------------------------------------------------------------------ source


def read_source(source: str, *, tracking_uri: str | None = None) -> list[Series]:
    """Series from a command-line word (not extract files; see :func:`read_sources`):

    * a backend's prefixed run: ``mlflow:RUN_ID``, ``wandb:ENTITY/PROJECT/RUN_ID``;
    * a folder with ``tokcal.json`` (a training output folder): the runs it records;
    * a word a backend claims: a local store folder (a run, or a folder of runs), a bare
      32-hex MLflow run id.

    ``tracking_uri`` is the MLflow store (``--tracking-uri``).
    """
    from tokcal.jobs.state import STATE_FILE

    overrides = {"tracking_uri": tracking_uri}
    classes = [backend_class(name) for name in backend_names()]
    for cls in classes:
        if cls.source_prefix and source.startswith(cls.source_prefix):
            return cls.read_runs(source[len(cls.source_prefix):], overrides)
    p = Path(source)
    if p.is_dir() and (p / STATE_FILE).is_file():
        return _from_state(p, overrides)
    for cls in classes:
        if cls.claims_source(source):
            return cls.read_runs(source, overrides)
    forms = ", ".join(cls.source_form for cls in classes if cls.source_form)
    raise TokcalError(f"report source not found: {source!r}; expected {forms}, a training output folder "
                      "with tokcal.json, or extract .jsonl files")


def _from_state(folder: Path, overrides: dict[str, Any]) -> list[Series]:
    from tokcal.jobs.state import STATE_FILE, read_state

    state = read_state(folder / STATE_FILE)
    out: list[Series] = []
    for t in state.get("trackers") or []:
        if isinstance(t, dict) and t.get("backend"):
            out += backend_class(t["backend"]).read_described(t, overrides)
    if not out:
        raise TokcalError(f"{folder}/{STATE_FILE} records no run to report on")
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

__all__ = ["BACKFILL_TAG", "Point", "Series", "extract_arrays", "extract_metrics", "extract_per_sample", "read_extract",
           "read_local", "read_mlflow", "read_source", "read_sources", "read_wandb", "step_from_name", "write_report"]
