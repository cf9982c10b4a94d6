"""Selective prediction: how accurate is the model on the decisions it is surest of?

Keep the ``n`` most confident decisions and abstain on the rest: the *risk* at ``n`` is
the error rate among the kept ones, the *coverage* ``n / N``. The risk-coverage curve
runs over n = 1..N; its area (AURC, Geifman & El-Yaniv 2017) is the mean risk over all n,
lower is better. ``accuracy_at_coverage(c)`` is 1 - risk at n = ceil(c N).

Tie rule: decisions with equal confidence are one unordered group. When the cut ``n``
falls inside a group, the risk is the expected risk over every order of that group
(the group's errors are spread evenly over its members), so the numbers never depend on
the order of the input.

Example:
    >>> conf = np.array([0.9, 0.8, 0.8, 0.6])
    >>> correct = np.array([True, True, False, False])
    >>> selective_risks(conf, correct).tolist()
    [0.0, 0.25, 0.3333333333333333, 0.5]
    >>> accuracy_at_coverage(conf, correct, 0.5)
    0.75
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tokcal.errors import TokcalError

#: Coverages at which ``compute_metrics`` reports the accuracy.
COVERAGES: tuple[float, ...] = (0.5, 0.8, 0.9)
#: Points of the stored risk-coverage curve: coverage 1/20, 2/20, ..., 1.
CURVE_POINTS = 20


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class RiskCoverage:
    """The risk-coverage curve on a fixed coverage grid, so curves line up across steps.

    Attributes:
        coverage: (G,) nominal coverage of each point, ``i / G``.
        n: (G,) decisions kept, ``ceil(coverage * N)`` (at least 1).
        risk: (G,) expected error rate among the kept decisions (see the tie rule).
        threshold: (G,) confidence of the least confident kept decision.
    """

    coverage: np.ndarray
    n: np.ndarray
    risk: np.ndarray
    threshold: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {
            "coverage": [float(x) for x in self.coverage],
            "n": [int(x) for x in self.n],
            "risk": [_num(x) for x in self.risk],
            "threshold": [_num(x) for x in self.threshold],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RiskCoverage":
        def floats(xs: Sequence[Any]) -> np.ndarray:
            return np.asarray([np.nan if x is None else x for x in xs], dtype=float)

        return cls(np.asarray(d["coverage"], dtype=float), np.asarray(d["n"], dtype=np.int64),
                   floats(d["risk"]), floats(d["threshold"]))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per point (``coverage``, ``n``, ``risk``, ``accuracy``, ``threshold``), for tables."""
        return [
            {
                "coverage": float(self.coverage[i]),
                "n": int(self.n[i]),
                "risk": _num(self.risk[i]),
                "accuracy": _num(1.0 - self.risk[i]),
                "threshold": _num(self.threshold[i]),
            }
            for i in range(len(self.coverage))
        ]


def _check(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct)
    if c.ndim != 1 or ok.shape != c.shape:
        raise TokcalError(f"expected confidence and correct of one shape (N,), got {c.shape} and {ok.shape}")
    if c.size and not np.all(np.isfinite(c)):
        raise TokcalError("expected finite confidences, got NaN or inf")
    return c, ok.astype(bool)


def ranked(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(risk, confidence)`` with the decisions sorted most confident first:
    ``risk[n - 1]`` is the expected error rate of the ``n`` most confident."""
    c, ok = _check(confidence, correct)
    n = len(c)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-c, kind="stable")
    c_sorted = c[order]
    wrong = (~ok[order]).astype(np.float64)
    # Tie groups (runs of equal confidence): errors before each group, and the group's error rate.
    start = np.flatnonzero(np.r_[True, c_sorted[1:] != c_sorted[:-1]])
    size = np.diff(np.r_[start, n])
    errors = np.add.reduceat(wrong, start)
    before = np.r_[0.0, np.cumsum(errors)[:-1]]
    group = np.repeat(np.arange(len(start)), size)
    kept = np.arange(1, n + 1, dtype=np.float64)
    expected = before[group] + (kept - start[group]) * (errors / size)[group]
    return expected / kept, c_sorted


def selective_risks(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(N,) expected error rate of the n most confident decisions, n = 1..N."""
    return ranked(confidence, correct)[0]


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean of :func:`selective_risks`; NaN when empty.

    Example:
        >>> aurc(np.array([0.9, 0.6]), np.array([True, False]))
        0.25
    """
    risk = selective_risks(confidence, correct)
    return float(risk.mean()) if len(risk) else math.nan


def kept_at(coverage: float, n_total: int) -> int:
    """``ceil(coverage * n_total)``, at least 1 (a hair of slack for 0.1 * 30 = 3.0000000000000004)."""
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float, np.floating)) \
            or not 0 < coverage <= 1:
        raise TokcalError(f"expected a coverage in (0, 1], got {coverage!r}")
    return max(1, min(n_total, math.ceil(coverage * n_total - 1e-9)))


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Expected accuracy of the ``ceil(coverage * N)`` most confident decisions; NaN when empty."""
    risk = selective_risks(confidence, correct)
    n = kept_at(coverage, len(risk))
    return float(1.0 - risk[n - 1]) if len(risk) else math.nan


def _curve(risk: np.ndarray, c_sorted: np.ndarray, points: int) -> RiskCoverage | None:
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 1:
        raise TokcalError(f"expected points >= 1, got {points!r}")
    if len(risk) == 0:
        return None
    grid = np.arange(1, int(points) + 1, dtype=np.float64) / int(points)
    kept = np.array([kept_at(float(c), len(risk)) for c in grid], dtype=np.int64)
    return RiskCoverage(grid, kept, risk[kept - 1], c_sorted[kept - 1])


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray, points: int = CURVE_POINTS) -> RiskCoverage | None:
    """The curve at coverage ``1/points, 2/points, ..., 1``; ``None`` with no decisions.

    Example:
        >>> rc = risk_coverage_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 1]), points=2)
        >>> rc.n.tolist(), rc.risk.tolist(), rc.threshold.tolist()
        ([2, 4], [0.0, 0.25], [0.8, 0.6])
    """
    return _curve(*ranked(confidence, correct), points)


@dataclass
class SelectiveSummary:
    """What ``compute_metrics`` reports, from one sort: AURC, accuracy per coverage, the curve."""

    aurc: float
    accuracy: dict[float, float]
    curve: RiskCoverage | None


def selective_summary(confidence: np.ndarray, correct: np.ndarray, *, coverages: Sequence[float] = COVERAGES,
                      points: int = CURVE_POINTS) -> SelectiveSummary:
    """:func:`aurc`, :func:`accuracy_at_coverage` at each of ``coverages`` and
    :func:`risk_coverage_curve`, sorting once.

    Example:
        >>> s = selective_summary(np.array([0.9, 0.6]), np.array([True, False]), coverages=(0.5,))
        >>> s.aurc, s.accuracy
        (0.25, {0.5: 1.0})
    """
    risk, c_sorted = ranked(confidence, correct)
    n = len(risk)
    kept = {float(c): kept_at(c, n) for c in coverages}  # validates even when there are no decisions
    acc = {c: (float(1.0 - risk[k - 1]) if n else math.nan) for c, k in kept.items()}
    return SelectiveSummary(float(risk.mean()) if n else math.nan, acc, _curve(risk, c_sorted, points))
