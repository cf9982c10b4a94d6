"""tokcal: how sure is your fine-tuned LLM of its decision?

The public API. Names are imported on first use, so ``import tracking`` is cheap and
pulls in neither torch nor a tracking client until they are needed.

Example:
    >>> import numpy as np
    >>> from tracking import DecisionSpec, compute_metrics
    >>> m = compute_metrics(np.array([[0.9, 0.05], [0.2, 0.7]]), np.array([0, 1]), DecisionSpec().labels)
    >>> m.scalars["eval_decision_accuracy"]
    1.0

The Trainer callback lives beside this package: ``from callbacks import DecisionTrackingCallback``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DecisionSpec": "tracking.core.spec",
    "DecisionScores": "tracking.core.scores",
    "DecisionMetrics": "tracking.core.metrics",
    "compute_metrics": "tracking.core.metrics",
    "TokcalError": "tracking.errors",
    "TrackingSettings": "tracking.jobs.settings",
    "open_tracker": "tracking.trackers",
    "Tracker": "tracking.trackers.base",
    "EvalSource": "tracking.data.sources",
    "DataFile": "tracking.data.sources",
    "score_checkpoint": "tracking.jobs.extract",
    "backfill": "tracking.jobs.backfill",
}

__all__ = [
    "DataFile",
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
    from tracking.core.metrics import DecisionMetrics, compute_metrics
    from tracking.core.scores import DecisionScores
    from tracking.core.spec import DecisionSpec
    from tracking.data.sources import DataFile, EvalSource
    from tracking.errors import TokcalError
    from tracking.jobs.backfill import backfill
    from tracking.jobs.extract import score_checkpoint
    from tracking.jobs.settings import TrackingSettings
    from tracking.trackers import open_tracker
    from tracking.trackers.base import Tracker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
