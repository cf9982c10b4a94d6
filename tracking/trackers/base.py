"""The tracker interface every backend implements, and helpers they share.

A tracker is one run in one backend. ``log_evaluation`` pushes everything about one
evaluation at one training step: the scalars, the histograms, the reliability
diagram(s), the bins as a table and, optionally, a per-sample table. Steps are explicit
and may come in any order (backfill adds points for old checkpoints later).
"""

from __future__ import annotations

import json
import math
import os
import re
from abc import ABC, abstractmethod
from typing import Any, Iterable

import numpy as np

from tracking.core.metrics import DecisionMetrics
from tracking.errors import TokcalError
from tracking.io import to_jsonable, write_atomic  # noqa: F401  (re-exported for the backends)

BACKENDS: tuple[str, ...] = ("local", "mlflow", "wandb")

# Names of the figures that ``tracking.core.plots.metric_figures`` draws, and the suffix each
# one gets in image keys and file names (``eval_decision_reliability``).
FIGURE_SUFFIX: dict[str, str] = {
    "reliability": "decision_reliability",
    "reliability_positive": "decision_reliability_positive",
    "histograms": "decision_histograms",
}

_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "WANDB_API_KEY",
    "DATABRICKS_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
)
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*):[^\s/@]*@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|api_key|apikey|secret|"
    r"sig|signature|key)=)[^&;\s#'\"]*",
    re.IGNORECASE,
)


def redact(text: str | None) -> str:
    """Hide credentials in a URI or in any message that may contain one.

    A password in a URI's user-info becomes ``***``, as do secret-looking query
    parameters (``token=``, ``password=``, ``sig=`` ...) and the values of credential
    environment variables (``MLFLOW_TRACKING_PASSWORD``, ``WANDB_API_KEY`` ...).

    Example:
        >>> redact("https://alice:s3cret@mlflow.example.com/?token=abc&x=1")
        'https://alice:***@mlflow.example.com/?token=***&x=1'
    """
    if text is None:
        return ""
    out = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", str(text))
    out = _QUERY_SECRET.sub(lambda m: f"{m.group('head')}***", out)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    return out


def wandb_key(key: str) -> str:
    """The Hugging Face W&B integration's key convention: ``eval_x`` -> ``eval/x``.

    ``eval_`` and ``test_`` keys move under ``eval/`` and ``test/``; other keys under
    ``train/``, as ``transformers.integrations.WandbCallback`` does.

    Example:
        >>> wandb_key("eval_decision_ece"), wandb_key("loss")
        ('eval/decision_ece', 'train/loss')
    """
    for section in ("eval", "test"):
        if key.startswith(f"{section}_"):
            return f"{section}/{key[len(section) + 1:]}"
    if "/" in key:
        return key
    return f"train/{key}"


def check_step(step: Any) -> int:
    """A training step must be an integer >= 0 (``numpy`` integers are fine)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise TokcalError(f"expected step to be an integer >= 0, got {step!r}")
    return int(step)


def check_metrics(metrics: Any) -> DecisionMetrics:
    if not isinstance(metrics, DecisionMetrics):
        raise TokcalError(f"expected metrics to be a DecisionMetrics, got {type(metrics).__name__}")
    return metrics


def finite_scalars(metrics: DecisionMetrics) -> dict[str, float]:
    """The scalars with a value: NaN marks a metric that could not be computed."""
    return {k: float(v) for k, v in metrics.scalars.items() if not math.isnan(float(v))}


def step_name(step: int) -> str:
    """``step_000120``: zero-padded so that file names sort by step."""
    return f"step_{step:06d}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"spec": {"labels": [...]}}`` -> ``spec.labels``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def bins_rows(metrics: DecisionMetrics, step: int) -> list[dict[str, Any]]:
    """The reliability bins of one evaluation as rows with ``step`` and ``curve`` columns.

    ``curve`` is ``top_label`` (confidence of the predicted label) or ``positive``
    (binary specs: mean q(positive) against the fraction that truly is positive).
    """
    rows: list[dict[str, Any]] = []
    for curve, bins in (("top_label", metrics.reliability), ("positive", metrics.positive_reliability)):
        if bins is not None:
            rows.extend({"step": step, "curve": curve, **row} for row in bins.rows())
    return rows


BINS_COLUMNS: tuple[str, ...] = ("step", "curve", "bin", "lower", "upper", "count", "confidence", "accuracy")


def sample_columns(samples: Iterable[dict[str, Any]]) -> list[str]:
    """Column names of a per-sample table: ``step`` first, then keys in first-seen order."""
    cols: dict[str, None] = {"step": None}
    for row in samples:
        if not isinstance(row, dict):
            raise TokcalError(f"expected samples to be a list of dicts, got an item of type {type(row).__name__}")
        cols.update(dict.fromkeys(str(k) for k in row))
    return list(cols)


def dumps_line(record: dict[str, Any]) -> bytes:
    """One JSON line (no NaN, which is not JSON), newline-terminated."""
    return (json.dumps(to_jsonable(record), allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


class Tracker(ABC):
    """One run in one tracking backend.

    Subclasses implement the abstract methods; callers use the tracker as a context
    manager or call :meth:`close` themselves.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from tracking.trackers import open_tracker
        >>> from tracking.core.metrics import compute_metrics
        >>> m = compute_metrics(np.array([[0.8, 0.1], [0.3, 0.6]]), np.array([0, 1]), ["Accept", "Reject"])
        >>> with open_tracker("local", local_dir=tempfile.mkdtemp()) as tracker:
        ...     tracker.log_evaluation(m, step=120)
        >>> sorted(tracker.logged_steps("eval_decision_ece"))
        [120]
    """

    name: str = "base"

    @property
    @abstractmethod
    def run_id(self) -> str | None:
        """The backend's id of this run (``None`` before it exists)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ``tokcal.json`` stores to find this run again (credentials redacted):
        ``backend``, ``run_id`` and ``project``/``entity`` or ``tracking_uri``, ``local_dir``."""

    @abstractmethod
    def log_config(self, config: dict[str, Any]) -> None:
        """Record the tracking settings (decision spec, options) with the run."""

    @abstractmethod
    def log_evaluation(
        self,
        metrics: DecisionMetrics,
        step: int,
        *,
        samples: list[dict[str, Any]] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Push one evaluation at training step ``step``: scalars, histograms, the
        reliability diagram(s), the bins table and, if given, a per-sample table."""

    @abstractmethod
    def logged_steps(self, key: str) -> set[int]:
        """Steps at which the scalar ``key`` (tokcal's name, e.g. ``eval_decision_ece``)
        already exists in the run; used to replay and backfill without doubling points."""

    def close(self) -> None:
        """Finish what this tracker started; a run it only attached to stays as it was."""

    def finish_run(self) -> None:
        """Mark the run finished even though this tracker only attached to it.

        ``tokcal sync`` calls it when the tracker that started the run could not close it
        (the server was down at the end of training). Backends without run states do nothing.
        """

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"
