"""Trainer glue for tokcal."""

from tokcal.callbacks.decision import DecisionTrackingCallback

__all__ = ["DecisionTrackingCallback"]
