"""Paired comparison of two evaluations of the same samples: is B really better than A?

Both evaluations scored the same decisions, so their difference is judged decision by
decision (paired), which is far sharper than comparing two separate intervals:

* each headline metric's difference ``B - A`` with a **paired bootstrap** interval: every
  resample draws the shared decisions once and computes the metric for both A and B on
  that same draw (stratified by true label, seeded);
* for accuracy, **McNemar's exact test**: only the decisions that A and B answer
  differently carry information; under "no difference" each such decision is as likely
  to favour A as B, so the count favouring B is binomial(n, 1/2);
* a **verdict** per metric at the stated level: "B better", "A better" or "no difference
  detected" (accuracy: from McNemar's test; the other metrics: from whether the interval
  of the difference excludes 0).

Decisions are joined by the record id when both records carry ids, else by the sample's
position in the eval set (and the decision's turn); decisions in only one record are left
out, with a note when fewer than :data:`MIN_SHARED` (or under half of either) are shared.

Example:
    >>> import numpy as np
    >>> from tokcal.core.per_sample import PerSample
    >>> gt = np.array([0, 1] * 50)
    >>> a = PerSample(["A", "B"], np.arange(100), gt, np.where(gt[:, None] == [0, 1], 0.6, 0.4))
    >>> b = PerSample(["A", "B"], np.arange(100), gt, np.where(gt[:, None] == [0, 1], 0.9, 0.1))
    >>> c = compare_records(a, b, n_resamples=200, metrics=["nll"])
    >>> c.rows[0].verdict
    'B better'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokcal.core.bootstrap import (
    HEADLINE,
    LEVEL,
    N_RESAMPLES,
    SEED,
    Decisions,
    check_level,
    check_resamples,
    counts_of,
    headline,
    metric_samples,
    percentile_interval,
    resample_indices,
)
from tokcal.core.per_sample import PerSample
from tokcal.errors import TokcalError

MIN_SHARED = 30  # fewer shared decisions than this: the comparison says little, and says so
B_BETTER, A_BETTER, NO_DIFFERENCE = "B better", "A better", "no difference detected"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on the shared decisions.

    Attributes:
        both_right, a_only, b_only, both_wrong: decisions right in both, only in A, only in B, in neither.
        p_value: two-sided exact p-value of "A and B are equally accurate".
    """

    both_right: int
    a_only: int
    b_only: int
    both_wrong: int
    p_value: float


@dataclass(frozen=True)
class MetricDifference:
    """One metric of A and B, their difference ``b - a`` and its paired interval, and the verdict."""

    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    verdict: str
    better: int  # +1: higher is better, -1: lower is better


@dataclass
class Comparison:
    """What :func:`compare_records` found.

    Attributes:
        rows: one :class:`MetricDifference` per metric.
        mcnemar: the accuracy test and its counts.
        shared: decisions in both records; only_a, only_b: decisions in one only (left out).
        level: the intervals' coverage and the tests' 1 - significance level.
        n_resamples, seed: the bootstrap's.
        notes: what the reader should know (few shared decisions, disagreeing truth...).
    """

    rows: list[MetricDifference]
    mcnemar: McNemar
    shared: int
    only_a: int
    only_b: int
    level: float
    n_resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def row(self, metric: str) -> MetricDifference:
        for r in self.rows:
            if r.metric == metric:
                return r
        raise TokcalError(f"expected a metric among {', '.join(r.metric for r in self.rows)}, got {metric!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.__dict__ for r in self.rows], "mcnemar": self.mcnemar.__dict__, "shared": self.shared,
                "only_a": self.only_a, "only_b": self.only_b, "level": self.level,
                "n_resamples": self.n_resamples, "seed": self.seed, "notes": list(self.notes)}


def mcnemar_exact(a_correct: Any, b_correct: Any) -> McNemar:
    """McNemar's exact test of two paired right/wrong columns.

    The p-value is ``min(1, 2 P(X <= min(a_only, b_only)))`` for X ~ binomial(a_only + b_only, 1/2)
    (1 when the two never disagree).

    Example:
        >>> t = mcnemar_exact(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 1, 1]))
        >>> t.a_only, t.b_only, t.p_value
        (1, 2, 1.0)
    """
    from scipy.stats import binom

    a = np.asarray(a_correct).astype(bool)
    b = np.asarray(b_correct).astype(bool)
    if a.shape != b.shape:
        raise TokcalError(f"expected two right/wrong columns of one length, got {a.shape} and {b.shape}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(min(1.0, 2.0 * binom.cdf(min(a_only, b_only), n, 0.5)))
    return McNemar(int(np.sum(a & b)), a_only, b_only, int(np.sum(~a & ~b)), p)


def _keys(rec: PerSample, by_id: bool) -> list[Any]:
    if by_id:
        return [(str(i), int(t)) for i, t in zip(rec.ids or [], rec.turn)]
    return rec.keys.tolist()


def align(a: PerSample, b: PerSample) -> tuple[PerSample, PerSample, int, int]:
    """The decisions ``a`` and ``b`` share, in one order (joined by record id when both have
    ids, else by position and turn), and how many were only in ``a`` and only in ``b``."""
    if [x.lower() for x in a.labels] != [x.lower() for x in b.labels]:
        raise TokcalError(f"expected two evaluations with the same labels, got {a.labels} and {b.labels}")
    by_id = a.ids is not None and b.ids is not None
    ka, kb = _keys(a, by_id), _keys(b, by_id)
    for name, keys in (("A", ka), ("B", kb)):
        if len(set(keys)) != len(keys):
            raise TokcalError(f"expected each decision once in {name}, got repeated sample "
                              f"{'ids' if by_id else 'positions'}")
    pos_b = {k: i for i, k in enumerate(kb)}
    ia = [i for i, k in enumerate(ka) if k in pos_b]
    ib = [pos_b[ka[i]] for i in ia]
    return _take(a, ia), _take(b, ib), len(ka) - len(ia), len(kb) - len(ib)


def _take(rec: PerSample, rows: Sequence[int]) -> PerSample:
    r = np.asarray(rows, dtype=np.int64)
    return PerSample(rec.labels, rec.index[r], rec.gt[r], rec.probs[r], rec.turn[r],
                     None if rec.ids is None else [rec.ids[i] for i in r])


def _verdict(diff_low: float, diff_high: float, better: int) -> str:
    if math.isnan(diff_low) or math.isnan(diff_high) or diff_low <= 0 <= diff_high:
        return NO_DIFFERENCE
    return B_BETTER if (diff_low > 0) == (better > 0) else A_BETTER


def compare_records(a: PerSample, b: PerSample, *, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                    seed: int = SEED, metrics: Sequence[str] | None = None, min_shared: int = MIN_SHARED) -> Comparison:
    """Compare evaluation ``b`` with evaluation ``a`` of the same samples.

    Args:
        a, b: the two evaluations' per-sample records.
        n_resamples: paired bootstrap resamples (default 1,000); seed: their seed.
        level: the intervals' coverage; a verdict other than "no difference detected" means
            the difference is significant at ``1 - level`` (default 0.95: 5 %).
        metrics: names from :data:`~tokcal.core.bootstrap.HEADLINE` (default all that apply).
        min_shared: below this many shared decisions the result carries a note.

    Raises:
        TokcalError: different labels, no shared decision, or the two records disagree on a
            shared decision's true label (not the same eval set).
    """
    check_level(level)
    check_resamples(n_resamples)
    a2, b2, only_a, only_b = align(a, b)
    shared = len(a2)
    if shared == 0:
        raise TokcalError("the two evaluations share no sample; expected evaluations of the same eval set")
    differ = int(np.sum(a2.gt != b2.gt))
    if differ:
        raise TokcalError(f"the two evaluations disagree on the true label of {differ} of {shared} shared samples; "
                          "expected evaluations of the same eval set")
    names = headline(a2, metrics)
    notes = []
    if shared < min_shared or shared < 0.5 * max(len(a), len(b)):
        notes.append(f"the two evaluations share only {shared} samples (A has {len(a)}, B {len(b)}): the intervals "
                     "are wide and a real difference may go undetected")
    if only_a or only_b:
        notes.append(f"left out: {only_a} samples only in A, {only_b} only in B")
    da, db = Decisions(a2), Decisions(b2)
    ones = np.ones((1, shared))
    va, vb = metric_samples(da, ones, names), metric_samples(db, ones, names)
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for idx in resample_indices(a2.gt, n_resamples, seed):
        w = counts_of(idx, shared)
        sa, sb = metric_samples(da, w, names), metric_samples(db, w, names)
        for m in names:
            diffs[m].append(sb[m] - sa[m])
    test = mcnemar_exact(a2.correct, b2.correct)
    rows = []
    for m in names:
        better = HEADLINE[m][1]
        lo, hi = percentile_interval(np.concatenate(diffs[m]), level)
        if m == "accuracy":
            verdict = NO_DIFFERENCE if test.p_value >= 1 - level or test.a_only == test.b_only else (
                B_BETTER if test.b_only > test.a_only else A_BETTER)
        else:
            verdict = _verdict(lo, hi, better)
        rows.append(MetricDifference(m, float(va[m][0]), float(vb[m][0]), float(vb[m][0] - va[m][0]), lo, hi,
                                     verdict, better))
    return Comparison(rows, test, shared, only_a, only_b, level, n_resamples, seed, notes)


__all__ = [
    "A_BETTER",
    "B_BETTER",
    "MIN_SHARED",
    "NO_DIFFERENCE",
    "Comparison",
    "McNemar",
    "MetricDifference",
    "align",
    "compare_records",
    "mcnemar_exact",
]
