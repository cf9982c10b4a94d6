"""Trainer glue for tokcal."""

from callbacks.decision import DecisionTrackingCallback

__all__ = ["DecisionTrackingCallback"]
