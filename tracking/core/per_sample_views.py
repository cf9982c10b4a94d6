"""The numbers behind the report's per-sample views, from the per-sample records of a run.

Input everywhere: the run's evaluations as ``(step, PerSample)`` pairs in step order.
Decisions join across evaluations by :attr:`~tokcal.core.per_sample.PerSample.keys`
(sample index and turn), so an evaluation may lack some samples or add new ones.

* :func:`learning_heatmap`: samples x steps of q(true label) (NaN where a sample is
  absent), rows sorted by when each sample was learned;
* :func:`confidently_wrong`: the ``k`` wrong decisions with the highest confidence;
* :func:`sample_trajectories`: flips per step and the per-sample summary
  (:func:`~tokcal.core.trajectories.trajectories` on the records);
* :func:`sample_risk_coverage`: the risk-coverage curve of one record, as
  ``compute_metrics`` draws it (for points that were read back without one).

Example:
    >>> import numpy as np
    >>> from tokcal.core.per_sample import PerSample
    >>> def rec(p_accept):
    ...     p = np.array(p_accept)
    ...     return PerSample(["Accept", "Reject"], index=np.arange(3), gt=np.array([0, 0, 1]),
    ...                      probs=np.stack([p, 1 - p], axis=1))
    >>> evals = [(10, rec([0.2, 0.6, 0.7])), (20, rec([0.8, 0.3, 0.1]))]
    >>> h = learning_heatmap(evals)
    >>> h.names, h.first_learned.tolist()
    (['#2', '#0', '#1'], [20.0, 20.0, nan])
    >>> h.q_true.round(2).tolist()
    [[0.3, 0.9], [0.2, 0.8], [0.6, 0.3]]
    >>> [(w.name, w.step, round(w.confidence, 2)) for w in confidently_wrong(evals, k=2)]
    [('#0', 10, 0.8), ('#1', 20, 0.7)]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tokcal.core.per_sample import PerSample
from tokcal.core.selective import CURVE_POINTS, RiskCoverage, risk_coverage_curve
from tokcal.core.trajectories import Trajectories, trajectories
from tokcal.errors import TokcalError

#: How many confidently wrong decisions the report lists by default.
TOP_WRONG = 10


def _check(records: Sequence[tuple[int, PerSample]]) -> list[tuple[int, PerSample]]:
    """Validate: a non-empty list of (step, PerSample) with one set of labels, steps non-decreasing."""
    out = list(records)
    if not out:
        raise TokcalError("expected at least one (step, PerSample) evaluation, got none")
    for item in out:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], PerSample)):
            raise TokcalError(f"expected (step, PerSample) pairs, got {type(item).__name__}")
    labels = out[0][1].labels
    for step, rec in out:
        if rec.labels != labels:
            raise TokcalError(f"expected the labels {labels} in every evaluation, got {rec.labels} at step {step}")
    steps = [float(s) for s, _ in out]
    if any(b < a for a, b in itertools.pairwise(steps)) or not all(math.isfinite(s) for s in steps):
        raise TokcalError(f"expected finite steps in non-decreasing order, got {steps}")
    return out


def sample_trajectories(records: Sequence[tuple[int, PerSample]]) -> Trajectories:
    """:func:`~tokcal.core.trajectories.trajectories` of the records, joined by their keys:
    flips to wrong / to right / forgotten per step and, per sample, when it was learned.

    Example:
        >>> import numpy as np
        >>> r = lambda p: PerSample(["A", "B"], np.arange(2), np.array([0, 1]), np.array(p))
        >>> t = sample_trajectories([(0, r([[0.9, 0.1], [0.8, 0.2]])), (5, r([[0.1, 0.9], [0.3, 0.7]]))])
        >>> t.flips_to_wrong.tolist(), t.flips_to_right.tolist()
        ([0, 1], [0, 1])
    """
    evals = _check(records)
    return trajectories([r.keys for _, r in evals], [r.correct for _, r in evals], [s for s, _ in evals])


@dataclass
class LearningHeatmap:
    """Samples x steps of the renormalised probability of the true label.

    Attributes:
        steps: (T,) the evaluations' steps.
        keys: (S,) each row's decision key, in row order.
        names: each row's name (:meth:`PerSample.sample_name` at its last evaluation).
        q_true: (S, T) q(true label); NaN where the sample is absent at that step.
        first_learned: (S,) the step it was learned (correct from then on); NaN if not.
        never_learned: (S,) never correct at any evaluation.
    """

    steps: np.ndarray
    keys: np.ndarray
    names: list[str]
    q_true: np.ndarray
    first_learned: np.ndarray
    never_learned: np.ndarray


def learning_heatmap(records: Sequence[tuple[int, PerSample]]) -> LearningHeatmap:
    """The trajectory heatmap: one row per decision key, one column per evaluation.

    Row order (each rule breaks the ties of the one before): learned earlier first, the
    samples not learned by their last evaluation after all learned ones; among those, the
    ones correct at some point (forgotten) before the never-learned; then higher mean
    q(true label) over the sample's evaluations first; then the key.
    """
    evals = _check(records)
    traj = sample_trajectories(evals)
    keys = traj.samples.ids.astype(np.int64)  # sorted
    q = np.full((len(keys), len(evals)), np.nan)
    names: dict[int, str] = {}
    for t, (_, rec) in enumerate(evals):
        rows = np.searchsorted(keys, rec.keys)
        q[rows, t] = rec.q_true
        names.update({int(k): rec.sample_name(i) for i, k in enumerate(rec.keys)})
    learned = traj.samples.first_learned
    never = traj.samples.never_learned
    with np.errstate(invalid="ignore"):
        mean_q = np.nanmean(q, axis=1) if len(keys) else np.zeros(0)
    # np.lexsort sorts by the last key first.
    order = np.lexsort((keys, -mean_q, never, np.where(np.isnan(learned), np.inf, learned)))
    return LearningHeatmap(np.array([float(s) for s, _ in evals]), keys[order],
                           [names[int(k)] for k in keys[order]], q[order], learned[order], never[order])


@dataclass
class WrongDecision:
    """One wrong decision: where, what the truth and the prediction were, how sure.

    ``confidence`` is q of the predicted label (renormalised over the labels); ``probs``
    the raw P per label (their sum is the decision mass).
    """

    key: int
    name: str
    step: int
    gt: int
    pred: int
    confidence: float
    probs: np.ndarray
    text: str | None


def confidently_wrong(records: Sequence[tuple[int, PerSample]], k: int = TOP_WRONG) -> list[WrongDecision]:
    """The ``k`` wrong decisions with the highest confidence, over all the given evaluations
    (the report passes one: the selected step). Ties: the later step first, then the key.

    Example:
        >>> import numpy as np
        >>> r = PerSample(["A", "B"], np.arange(3), np.array([0, 0, 1]),
        ...               np.array([[0.1, 0.9], [0.3, 0.6], [0.2, 0.7]]))
        >>> [(w.name, w.pred, round(w.confidence, 3)) for w in confidently_wrong([(7, r)])]
        [('#0', 1, 0.9), ('#1', 1, 0.667)]
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TokcalError(f"expected k >= 1, got {k!r}")
    evals = _check(records)
    cand = []  # (-confidence, -step, key, eval, row)
    for t, (step, rec) in enumerate(evals):
        wrong = np.flatnonzero(~rec.correct)
        conf, keys = rec.confidence, rec.keys
        cand += [(-float(conf[i]), -int(step), int(keys[i]), t, int(i)) for i in wrong]
    out = []
    for neg_conf, _, key, t, i in sorted(cand)[:int(k)]:
        step, rec = evals[t]
        out.append(WrongDecision(key, rec.sample_name(i), int(step), int(rec.gt[i]), int(rec.pred[i]), -neg_conf,
                                 rec.probs[i].copy(), None if rec.text is None else rec.text[i]))
    return out


def sample_risk_coverage(record: PerSample, points: int = CURVE_POINTS) -> RiskCoverage | None:
    """The risk-coverage curve of one record, ranked by P of the predicted label as
    ``compute_metrics`` ranks it; ``None`` with no decisions."""
    if not isinstance(record, PerSample):
        raise TokcalError(f"expected a PerSample, got {type(record).__name__}")
    p_pred = record.probs[np.arange(len(record)), record.pred] if len(record) else np.zeros(0)
    return risk_coverage_curve(p_pred, record.correct, points)


__all__ = [
    "TOP_WRONG",
    "LearningHeatmap",
    "WrongDecision",
    "confidently_wrong",
    "learning_heatmap",
    "sample_risk_coverage",
    "sample_trajectories",
]
