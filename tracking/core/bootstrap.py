"""Confidence intervals for the headline metrics of one evaluation: a percentile bootstrap
over its decisions, from the per-sample record.

A resample draws the evaluation's decisions again, with replacement, as many as there
were; by default within each true label (stratified), so each resample keeps the label
mix of the eval set. The metric is computed on each of ``n_resamples`` resamples, and the
interval is the middle ``level`` of those values (2.5th to 97.5th percentile for 95 %).
Resamples are seeded: the same record gives the same interval.

Vectorised: a resample is a row of counts (how often each decision was drawn), and every
metric is a weighted sum over decisions, so a block of resamples is a few matrix products
(:func:`metric_samples`). :func:`resample_indices` yields the very resamples as index rows,
for anyone who wants to check a number by recomputing it on ``record[idx]``.

Example:
    >>> import numpy as np
    >>> from tokcal.core.per_sample import PerSample
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet([1, 1], 300)
    >>> rec = PerSample(["Accept", "Reject"], np.arange(300), (rng.random(300) < p[:, 1]).astype(int), p)
    >>> iv = confidence_intervals(rec, n_resamples=200, metrics=["accuracy"])["accuracy"]
    >>> iv.low < iv.value < iv.high
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokcal.core.metrics import _EPS, bin_edges
from tokcal.core.per_sample import PerSample
from tokcal.core.smooth_ece import smooth_ece
from tokcal.errors import TokcalError

#: The headline metrics: name -> (scalar name without prefix, +1 higher is better / -1 lower).
HEADLINE: dict[str, tuple[str, int]] = {
    "accuracy": ("decision_accuracy", 1),
    "balanced_accuracy": ("decision_balanced_accuracy", 1),
    "ece": ("decision_ece", -1),
    "smece": ("decision_smece", -1),
    "brier": ("decision_brier", -1),
    "nll": ("decision_nll", -1),
    "auroc": ("decision_auroc", 1),
    "mass": ("decision_prob_mass", 1),
}
N_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
CHUNK = 100  # resamples drawn and evaluated together (fixed: the draws depend on it)
N_BINS = 15  # the ECE's bins, as compute_metrics' default


@dataclass(frozen=True)
class Interval:
    """A metric's value on the whole evaluation and its bootstrap interval."""

    value: float
    low: float
    high: float
    level: float = LEVEL

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}


class Decisions:
    """The per-decision columns every metric needs, computed once from a record."""

    def __init__(self, record: PerSample, n_bins: int = N_BINS) -> None:
        if not len(record):
            raise TokcalError("expected a per-sample record with decisions, got an empty one")
        self.n = len(record)
        self.k = len(record.labels)
        self.gt = record.gt
        q = record.q
        self.correct = record.correct.astype(np.float64)
        self.conf = record.confidence
        self.mass = record.mass
        onehot = np.eye(self.k)[self.gt]
        self.brier = (q[:, 0] - onehot[:, 0]) ** 2 if self.k == 2 else np.sum((q - onehot) ** 2, axis=1)
        self.nll = -np.log(np.clip(record.q_true, _EPS, 1 - _EPS))
        edges = bin_edges(n_bins)
        self.bin = np.clip(np.searchsorted(edges, self.conf, side="left") - 1, 0, n_bins - 1)
        self.n_bins = n_bins
        self.score = q[:, 0]  # AUROC: q(positive label) against being positive
        self.positive = (self.gt == 0).astype(np.float64)
        # every weighted sum the metrics need, one column each, so a block of resamples is one product:
        # correct, mass, brier, nll | per label: right and true | per bin: correct - confidence
        onehot = np.eye(self.k)[self.gt]
        gap = np.zeros((self.n, n_bins))
        gap[np.arange(self.n), self.bin] = self.correct - self.conf
        self.groups = None  # AUROC's score groups, built when first needed
        self.columns = np.column_stack([self.correct, self.mass, self.brier, self.nll,
                                        onehot * self.correct[:, None], onehot, gap])


def resample_indices(gt: Any, n_resamples: int = N_RESAMPLES, seed: int = SEED, *,
                     stratify: bool = True) -> Iterator[np.ndarray]:
    """Blocks of up to :data:`CHUNK` resamples as (B, N) index rows.

    Stratified: position ``i`` of every row is drawn among the decisions with ``gt[i]``'s
    label, so each label keeps its count. Otherwise among all decisions.
    """
    g = np.asarray(gt).reshape(-1)
    n = len(g)
    check_resamples(n_resamples)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(g == lab) for lab in np.unique(g)] if stratify else [np.arange(n)]
    for start in range(0, n_resamples, CHUNK):
        b = min(CHUNK, n_resamples - start)
        idx = np.empty((b, n), dtype=np.int64)
        for members in groups:
            idx[:, members] = members[rng.integers(0, len(members), size=(b, len(members)))]
        yield idx


def check_resamples(n_resamples: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise TokcalError(f"expected n_resamples >= 1, got {n_resamples!r}")


def counts_of(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, N) index rows -> (B, N) counts: how often each decision is in each row."""
    b = len(idx)
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def metric_samples(d: Decisions, weights: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Each metric on each weighting: ``weights`` is (B, N) counts (a row of ones: the evaluation itself).

    The same numbers as :func:`~tokcal.core.metrics.compute_metrics` on the resampled rows
    (the tests check it resample by resample).
    """
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    sums = w @ d.columns
    k = d.k
    out: dict[str, np.ndarray] = {}
    for name in metrics:
        if name in ("accuracy", "mass", "brier", "nll"):
            out[name] = sums[:, ("accuracy", "mass", "brier", "nll").index(name)] / total
        elif name == "balanced_accuracy":
            hits, support = sums[:, 4: 4 + k], sums[:, 4 + k: 4 + 2 * k]
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
            out[name] = np.nanmean(recall, axis=1)
        elif name == "ece":
            out[name] = np.abs(sums[:, 4 + 2 * k:]).sum(axis=1) / total
        elif name == "smece":
            out[name] = smooth_ece(d.conf, d.correct, w)
        elif name == "auroc":
            out[name] = _weighted_auroc(d, w)
        else:
            raise TokcalError(f"expected metrics among {', '.join(HEADLINE)}, got {name!r}")
    return out


def _group_sums(d: Decisions, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, G) weight of the positive and of the negative decisions at each distinct score, in score order."""
    if d.groups is None:
        from scipy.sparse import csr_matrix

        _, group = np.unique(d.score, return_inverse=True)
        g = int(group.max()) + 1
        rows = np.arange(d.n)
        d.groups = csr_matrix((np.ones(d.n), (rows, group + g * (1 - d.positive).astype(np.int64))),
                              shape=(d.n, 2 * g))
    both = np.asarray((d.groups.T @ w.T).T)
    half = both.shape[1] // 2
    return both[:, :half], both[:, half:]


def _weighted_auroc(d: Decisions, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC where decision i counts w[b, i] times (ties count a half); NaN where a
    row lacks either class. Only for two labels."""
    if d.k != 2:
        return np.full(len(w), np.nan)
    pos, neg = _group_sums(d, w)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.sum(pos * (below + 0.5 * neg), axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def headline(record: PerSample, metrics: Sequence[str] | None = None) -> list[str]:
    """The metrics that apply to ``record``: AUROC only for two labels with both in the truth."""
    names = list(HEADLINE) if metrics is None else list(metrics)
    bad = [m for m in names if m not in HEADLINE]
    if bad:
        raise TokcalError(f"expected metrics among {', '.join(HEADLINE)}, got {', '.join(map(repr, bad))}")
    if "auroc" in names and (len(record.labels) != 2 or len(np.unique(record.gt)) < 2):
        names.remove("auroc")
    return names


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The middle ``level`` of the finite ``samples`` (linear interpolation, as numpy's percentile)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return math.nan, math.nan
    lo, hi = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def check_level(level: float) -> None:
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise TokcalError(f"expected level between 0 and 1 (0.95 for 95 %), got {level!r}")


def confidence_intervals(record: PerSample, *, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                         seed: int = SEED, stratify: bool = True,
                         metrics: Sequence[str] | None = None) -> dict[str, Interval]:
    """Percentile-bootstrap intervals of the headline metrics of one evaluation.

    Args:
        record: the evaluation's per-sample record.
        n_resamples: resamples drawn (default 1,000).
        level: the intervals' coverage (default 0.95).
        seed: the resamples' seed: the same record and seed give the same intervals.
        stratify: resample within each true label (default), keeping the label mix.
        metrics: names from :data:`HEADLINE` (default all; AUROC only where it is defined).

    Returns:
        name -> :class:`Interval` (the value on the whole evaluation, and the interval).

    Example:
        >>> rec = PerSample(["A", "B"], np.arange(4), np.array([0, 0, 1, 1]),
        ...                 np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]]))
        >>> iv = confidence_intervals(rec, n_resamples=100, metrics=["accuracy"])["accuracy"]
        >>> iv.value, 0.5 <= iv.low <= iv.high <= 1.0
        (0.75, True)
    """
    check_level(level)
    check_resamples(n_resamples)
    names = headline(record, metrics)
    d = Decisions(record)
    value = metric_samples(d, np.ones((1, d.n)), names)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for idx in resample_indices(record.gt, n_resamples, seed, stratify=stratify):
        for m, v in metric_samples(d, counts_of(idx, d.n), names).items():
            draws[m].append(v)
    out = {}
    for m in names:
        lo, hi = percentile_interval(np.concatenate(draws[m]), level)
        out[m] = Interval(float(value[m][0]), lo, hi, level)
    return out


__all__ = [
    "CHUNK",
    "HEADLINE",
    "LEVEL",
    "N_RESAMPLES",
    "SEED",
    "Decisions",
    "Interval",
    "check_level",
    "check_resamples",
    "confidence_intervals",
    "counts_of",
    "headline",
    "metric_samples",
    "percentile_interval",
    "resample_indices",
]
