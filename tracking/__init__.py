"""tokcal: how sure is your fine-tuned LLM of its decision?

The public API. Names are imported on first use, so ``import tokcal`` is cheap and
pulls in neither torch nor a tracking client until they are needed.

Example:
    >>> import numpy as np
    >>> from tokcal import DecisionSpec, compute_metrics
    >>> m = compute_metrics(np.array([[0.9, 0.05], [0.2, 0.7]]), np.array([0, 1]), DecisionSpec().labels)
    >>> m.scalars["eval_decision_accuracy"]
    1.0

The Trainer callback: ``from tokcal import DecisionTrackingCallback`` (it loads transformers).

This package's source is the repository's ``tracking/`` folder, and ``tokcal.callbacks`` is its
``callbacks/`` folder: see docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DecisionSpec": "tokcal.core.spec",
    "DecisionScores": "tokcal.core.scores",
    "DecisionMetrics": "tokcal.core.metrics",
    "compute_metrics": "tokcal.core.metrics",
    "TokcalError": "tokcal.errors",
    "TrackingSettings": "tokcal.jobs.settings",
    "open_tracker": "tokcal.trackers",
    "Tracker": "tokcal.trackers.base",
    "EvalSource": "tokcal.data.sources",
    "DataFile": "tokcal.data.sources",
    "score_checkpoint": "tokcal.jobs.extract",
    "backfill": "tokcal.jobs.backfill",
    "DecisionTrackingCallback": "tokcal.callbacks.decision",
}

__all__ = [
    "DataFile",
    "DecisionTrackingCallback",
    "DecisionMetrics",
    "DecisionScores",
    "DecisionSpec",
    "EvalSource",
    "TokcalError",
    "Tracker",
    "TrackingSettings",
    "backfill",
    "compute_metrics",
    "open_tracker",
    "score_checkpoint",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from tokcal.callbacks.decision import DecisionTrackingCallback
    from tokcal.core.metrics import DecisionMetrics, compute_metrics
    from tokcal.core.scores import DecisionScores
    from tokcal.core.spec import DecisionSpec
    from tokcal.data.sources import DataFile, EvalSource
    from tokcal.errors import TokcalError
    from tokcal.jobs.backfill import backfill
    from tokcal.jobs.extract import score_checkpoint
    from tokcal.jobs.settings import TrackingSettings
    from tokcal.trackers import open_tracker
    from tokcal.trackers.base import Tracker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokcal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
