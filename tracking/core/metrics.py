"""Calibration and decision metrics: numpy arrays in, numbers and bins out.

Pure functions (no torch) so that the callback, backfill and reports share one
implementation. ``compute_metrics`` is the entry point; the helpers are public too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tokcal.core.classification import (
    balanced_accuracy,
    best_threshold,
    macro_f1,
    matthews_corrcoef,
    precision_recall,
)
from tokcal.core.selective import COVERAGES, RiskCoverage, selective_summary
from tokcal.core.smooth_ece import SmoothCurve, smooth_curve, smooth_ece
from tokcal.core.spec import label_key
from tokcal.errors import TokcalError

_EPS = float(np.finfo(np.float64).eps)
_TINY = 1e-300


@dataclass
class ReliabilityBins:
    """Equal-width reliability bins on [0, 1]; bin m is ((m-1)/M, m/M], 0 in the first.

    ``confidence`` and ``accuracy`` are NaN in empty bins.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {
            "edges": [float(x) for x in self.edges],
            "counts": [int(x) for x in self.counts],
            "confidence": [_num(x) for x in self.confidence],
            "accuracy": [_num(x) for x in self.accuracy],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReliabilityBins":
        return cls(
            edges=np.asarray(d["edges"], dtype=float),
            counts=np.asarray(d["counts"], dtype=np.int64),
            confidence=np.asarray([np.nan if x is None else x for x in d["confidence"]], dtype=float),
            accuracy=np.asarray([np.nan if x is None else x for x in d["accuracy"]], dtype=float),
        )

    def rows(self) -> list[dict[str, Any]]:
        """One dict per bin, for tables."""
        return [
            {
                "bin": m,
                "lower": float(self.edges[m]),
                "upper": float(self.edges[m + 1]),
                "count": int(self.counts[m]),
                "confidence": _num(self.confidence[m]),
                "accuracy": _num(self.accuracy[m]),
            }
            for m in range(len(self.counts))
        ]


@dataclass
class Histogram:
    """Counts over fixed edges on [0, 1], so histograms line up across steps."""

    edges: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {"edges": [float(x) for x in self.edges], "counts": [int(x) for x in self.counts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Histogram":
        return cls(np.asarray(d["edges"], dtype=float), np.asarray(d["counts"], dtype=np.int64))


@dataclass
class DecisionMetrics:
    """Everything about one evaluation.

    Attributes:
        labels: the spec's labels, positive class first.
        scalars: metric name -> value, names carry ``prefix`` (``eval_decision_ece``).
        reliability: top-label reliability bins on the normalised probabilities.
        positive_reliability: binary specs only: mean q(positive) against the fraction
            that truly is positive.
        histograms: ``p_<label>``, ``mass``, ``confidence`` over fixed edges.
        notes: why a metric was left out (e.g. one class absent for AUROC).
        risk_coverage: the risk-coverage curve on ``confidence`` (selective prediction).
        smooth_reliability: the kernel-smoothed top-label reliability curve with its band
            (:func:`~tokcal.core.smooth_ece.smooth_curve`, the smooth ECE's kernel).
    """

    labels: list[str]
    prefix: str
    scalars: dict[str, float]
    reliability: ReliabilityBins | None
    positive_reliability: ReliabilityBins | None = None
    histograms: dict[str, Histogram] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    risk_coverage: RiskCoverage | None = None
    smooth_reliability: SmoothCurve | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "prefix": self.prefix,
            "scalars": {k: _num(v) for k, v in self.scalars.items()},
            "reliability": self.reliability.to_dict() if self.reliability else None,
            "positive_reliability": (
                self.positive_reliability.to_dict() if self.positive_reliability else None
            ),
            "histograms": {k: h.to_dict() for k, h in self.histograms.items()},
            "notes": list(self.notes),
            "risk_coverage": self.risk_coverage.to_dict() if self.risk_coverage else None,
            "smooth_reliability": self.smooth_reliability.to_dict() if self.smooth_reliability else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecisionMetrics":
        return cls(
            labels=list(d["labels"]),
            prefix=d.get("prefix", "eval_"),
            scalars={k: (math.nan if v is None else float(v)) for k, v in d["scalars"].items()},
            reliability=ReliabilityBins.from_dict(d["reliability"]) if d.get("reliability") else None,
            positive_reliability=(
                ReliabilityBins.from_dict(d["positive_reliability"])
                if d.get("positive_reliability")
                else None
            ),
            histograms={k: Histogram.from_dict(h) for k, h in d.get("histograms", {}).items()},
            notes=list(d.get("notes", [])),
            risk_coverage=RiskCoverage.from_dict(d["risk_coverage"]) if d.get("risk_coverage") else None,
            smooth_reliability=(
                SmoothCurve.from_dict(d["smooth_reliability"]) if d.get("smooth_reliability") else None
            ),
        )


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def bin_edges(n_bins: int, name: str = "n_bins") -> np.ndarray:
    """``n_bins + 1`` equal-width edges on [0, 1]: edge m is the double nearest m / M.

    (``np.linspace`` computes m * (1/M), which for some M, e.g. 6, 12, 14, lies one ulp
    below m / M and would put a confidence of exactly m / M in the next bin.)
    """
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise TokcalError(f"expected {name} >= 1, got {n_bins!r}")
    return np.arange(int(n_bins) + 1, dtype=np.float64) / int(n_bins)


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin ``confidence`` and average ``outcome`` (1 correct / positive, 0 not) per bin.

    Example:
        >>> b = reliability_bins(np.array([0.9, 0.2]), np.array([1, 0]), n_bins=2)
        >>> b.counts.tolist(), b.accuracy.tolist()
        ([1, 1], [0.0, 1.0])
    """
    edges = bin_edges(n_bins)
    conf = np.asarray(confidence, dtype=np.float64)
    out = np.asarray(outcome, dtype=np.float64)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_out = np.bincount(idx, weights=out, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / np.maximum(counts, 1), np.nan)
        mean_out = np.where(counts > 0, sum_out / np.maximum(counts, 1), np.nan)
    return ReliabilityBins(edges=edges, counts=counts, confidence=mean_conf, accuracy=mean_out)


def calibration_errors(bins: ReliabilityBins) -> tuple[float, float]:
    """(ECE, MCE) from bins: count-weighted mean and max of |accuracy - confidence|."""
    total = bins.counts.sum()
    if total == 0:
        return math.nan, math.nan
    full = bins.counts > 0
    gap = np.abs(bins.accuracy[full] - bins.confidence[full])
    return float(np.sum(gap * bins.counts[full]) / total), float(gap.max())


def normalise(probs: np.ndarray) -> np.ndarray:
    """q_k = p_k / sum_k p_k per row; rows with zero mass become uniform."""
    p = np.asarray(probs, dtype=np.float64)
    mass = p.sum(axis=1, keepdims=True)
    k = p.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(mass > 0, p / np.where(mass > 0, mass, 1.0), 1.0 / k)
    return q


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(q: np.ndarray, gt: np.ndarray) -> float:
    """Mean -log q[gt], with q clipped to [eps, 1 - eps] (as scikit-learn's log_loss)."""
    picked = np.clip(q[np.arange(len(gt)), gt], _EPS, 1 - _EPS)
    return float(-np.mean(np.log(picked)))


def brier_score(q: np.ndarray, gt: np.ndarray) -> float:
    """Binary: mean (q_pos - y_pos)^2 with the first label positive. N labels: mean of
    the summed squared error over labels."""
    onehot = np.eye(q.shape[1])[gt]
    if q.shape[1] == 2:
        return float(np.mean((q[:, 0] - onehot[:, 0]) ** 2))
    return float(np.mean(np.sum((q - onehot) ** 2, axis=1)))


def binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise TokcalError("expected both classes for AUROC, got one")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Mid-ranks for ties.
    _, start, count = np.unique(sorted_s, return_index=True, return_counts=True)
    mid = start + (count + 1) / 2.0
    ranks[order] = np.repeat(mid, count)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, ties grouped."""
    y = np.asarray(y).astype(np.float64)
    s = np.asarray(score, dtype=np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        raise TokcalError("expected at least one positive for AUPRC, got none")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[last_of_group]
    seen = (np.arange(len(s)) + 1)[last_of_group]
    precision = tp / seen
    recall = tp / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def debiased_ece(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15) -> float:
    """Debiased calibration error (Kumar, Liang and Ma, 2019): the root of the mean squared gap
    between confidence and outcome over equal-mass bins, minus each bin's sampling noise.

    The plain binned estimate is biased upwards (a perfectly calibrated model shows a gap on a
    finite sample); this one subtracts each bin's expected squared noise,
    ``acc_b (1 - acc_b) / (n_b - 1)``, and clips at 0 before the root. It is on the scale of a
    root mean square, so it reads like the ECE but is not equal to it. Bins are ``n_bins``
    groups of about equal size, split half-way between neighbouring confidences (as the
    authors' ``uncertainty-calibration`` package; a bin of one decision counts 0).

    Example:
        >>> round(debiased_ece(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 0, 1, 1]), 2), 4)
        0.1871
    """
    f = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    n = len(f)
    if n == 0:
        return math.nan
    parts = np.array_split(np.sort(f), min(int(n_bins), n))
    edges = np.unique(np.r_[[(a[-1] + b[0]) / 2.0 for a, b in zip(parts[:-1], parts[1:])], 1.0])
    idx = np.searchsorted(edges, f, side="left")
    m = len(edges) + 1
    count = np.bincount(idx, minlength=m).astype(np.float64)
    gap = np.bincount(idx, weights=f - y, minlength=m)
    hit = np.bincount(idx, weights=y, minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = hit / count
        err = (gap / count) ** 2 - acc * (1 - acc) / (count - 1)
    err = np.where(count >= 2, err, 0.0)
    return float(max(np.sum(count * err) / n, 0.0) ** 0.5)


def brier_decomposition(forecast: np.ndarray, outcome: np.ndarray) -> tuple[float, float, float]:
    """The Brier score of one event split as ``calibration - discrimination + uncertainty``.

    The CORP split (Dimitriadis, Gneiting and Jordan, 2021): the forecasts are recalibrated by
    isotonic regression of the outcome on them (ties pooled); ``calibration`` is how much the
    score drops by that recalibration (0 for a calibrated model), ``discrimination`` how much
    better the recalibrated forecasts score than always forecasting the base rate, and
    ``uncertainty`` the score of the base rate, ``r (1 - r)``. The three add up to the Brier
    score exactly.

    Example:
        >>> cal, dsc, unc = brier_decomposition(np.array([0.8, 0.8, 0.3, 0.3]), np.array([1, 1, 0, 1]))
        >>> round(cal, 4), round(dsc, 4), round(unc, 4), round(cal - dsc + unc, 4)
        (0.04, 0.0625, 0.1875, 0.165)
    """
    from scipy.optimize import isotonic_regression

    x = np.asarray(forecast, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    fitted = isotonic_regression(means, weights=counts.astype(np.float64)).x[inverse]
    rate = float(y.mean())
    score, recal = float(np.mean((x - y) ** 2)), float(np.mean((fitted - y) ** 2))
    unc = float(np.mean((rate - y) ** 2))
    return score - recal, unc - recal, unc


def fit_temperature(log_p: np.ndarray, gt: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(log_p / T) at ``gt``.

    ``log_p`` are the label log-probabilities (the label logits up to a constant).
    Searched on log T in [1e-2, 1e2].
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(log_p, dtype=np.float64)
    rows = np.arange(len(gt))

    def nll(log_t: float) -> float:
        zt = z / math.exp(log_t)
        zt = zt - zt.max(axis=1, keepdims=True)
        lse = np.log(np.exp(zt).sum(axis=1))
        return float(np.mean(lse - zt[rows, gt]))

    res = minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def compute_metrics(
    probs: np.ndarray,
    gt: np.ndarray,
    labels: Sequence[str],
    *,
    n_missing: int = 0,
    n_nonfinite: int = 0,
    n_bins: int = 15,
    hist_bins: int = 20,
    prefix: str = "eval_",
) -> DecisionMetrics:
    """All decision and calibration metrics for one evaluation.

    Args:
        probs: (N, K) probability of each label at the answer position (variants summed;
            not normalised, so rows sum to the decision mass).
        gt: (N,) index of the true label.
        labels: the K labels, positive class first.
        n_missing: supervised answers where no decision token was found.
        n_nonfinite: decisions left out before because their probabilities were not finite
            (:meth:`~tokcal.core.scores.DecisionScores.without_nonfinite`); ``probs`` itself
            must be finite.
        n_bins: reliability bins; hist_bins: histogram bins on [0, 1].
        prefix: metric-name prefix (``eval_`` or ``eval_<name>_``).

    The scalars are listed in docs/metrics.md. One that is undefined on
    these data is NaN (precision of a label never predicted, recall of a label never true;
    see :mod:`tokcal.core.classification`); AUROC/AUPRC are left out with a note.

    Example:
        >>> m = compute_metrics(np.array([[0.9, 0.05], [0.2, 0.7]]), np.array([0, 1]),
        ...                     ["Accept", "Reject"])
        >>> round(m.scalars["eval_decision_accuracy"], 2), round(m.scalars["eval_avg_p_accept"], 2)
        (1.0, 0.55)
    """
    bin_edges(n_bins, "n_bins")
    bin_edges(hist_bins, "hist_bins")
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(gt)
    k = len(labels)
    if p.ndim == 1 and p.size == 0:  # e.g. np.asarray([]): no decisions at all
        p = p.reshape(0, k)
    if p.ndim != 2 or p.shape[1] != k:
        raise TokcalError(f"expected probs of shape (N, {k}), got {tuple(p.shape)}")
    if g.shape != (p.shape[0],):
        raise TokcalError(f"expected gt of shape ({p.shape[0]},), got {tuple(g.shape)}")
    if g.size and not (np.issubdtype(g.dtype, np.integer)
                       or (np.issubdtype(g.dtype, np.floating) and np.all(g == np.round(g)))):
        raise TokcalError(f"expected integer label indices in gt, got dtype {g.dtype}")
    if len(g) and (g.min() < 0 or g.max() >= k):
        raise TokcalError(f"expected gt in [0, {k - 1}], got values {sorted(set(g.tolist()))}")
    bad = ~np.isfinite(p) | (p < 0)
    if np.any(bad):
        i, j = np.argwhere(bad)[0]
        raise TokcalError(f"expected finite probabilities >= 0, got {float(p[i, j])!r} at row {int(i)}, label {int(j)} "
                          "(DecisionScores.without_nonfinite leaves non-finite rows out and counts them)")
    row_sum = p.sum(axis=1)
    if np.any(row_sum > 1 + 1e-4):
        i = int(np.argmax(row_sum))
        raise TokcalError(f"expected rows of probs to sum to at most 1, got {float(row_sum[i])!r} at row {i}")
    g = g.astype(np.int64)
    keys = [label_key(x) for x in labels]
    n = len(g)
    s: dict[str, float] = {
        f"{prefix}decision_samples": float(n),
        f"{prefix}decision_missing": float(n_missing),
        f"{prefix}decision_nonfinite": float(n_nonfinite),
    }
    notes: list[str] = []
    if n == 0:
        notes.append("no decisions were found, so only counts are reported")
        return DecisionMetrics(list(labels), prefix, s, None, None, {}, notes)

    mass = p.sum(axis=1)
    pred = p.argmax(axis=1)
    correct = (pred == g).astype(np.float64)
    p_pred = p[np.arange(n), pred]
    q = normalise(p)
    q_conf = q.max(axis=1)

    for j, key in enumerate(keys):
        s[f"{prefix}avg_p_{key}"] = float(p[:, j].mean())
    s[f"{prefix}decision_prob_mass"] = float(mass.mean())
    s[f"{prefix}decision_confidence"] = float(p_pred.mean())
    s[f"{prefix}decision_accuracy"] = float(correct.mean())

    # Imbalance-aware: a model that leans to the majority label scores well on accuracy only.
    cm = np.bincount(g * k + pred, minlength=k * k).reshape(k, k)
    s[f"{prefix}decision_balanced_accuracy"] = balanced_accuracy(cm)
    s[f"{prefix}decision_macro_f1"] = macro_f1(cm)
    s[f"{prefix}decision_mcc"] = matthews_corrcoef(cm)
    precision, recall = precision_recall(cm)
    for j, key in enumerate(keys):
        s[f"{prefix}decision_precision_{key}"] = float(precision[j])
        s[f"{prefix}decision_recall_{key}"] = float(recall[j])
    if k == 2:
        threshold, acc = best_threshold(q[:, 0], g == 0)
        s[f"{prefix}decision_best_threshold"] = threshold
        s[f"{prefix}decision_best_threshold_accuracy"] = acc
    s[f"{prefix}decision_mass_p05"] = float(np.percentile(mass, 5))
    s[f"{prefix}decision_mass_below_half"] = float(np.mean(mass < 0.5))

    selective = selective_summary(p_pred, correct > 0, coverages=COVERAGES)
    s[f"{prefix}decision_aurc"] = selective.aurc
    for c, acc in selective.accuracy.items():
        s[f"{prefix}decision_accuracy_cov{round(100 * c)}"] = acc

    top = reliability_bins(q_conf, correct, n_bins)
    ece, mce = calibration_errors(top)
    s[f"{prefix}decision_ece"] = ece
    s[f"{prefix}decision_mce"] = mce
    smece, width = smooth_ece(q_conf, correct, return_width=True)
    s[f"{prefix}decision_smece"] = float(smece[0])
    s[f"{prefix}decision_ece_debiased"] = debiased_ece(q_conf, correct, n_bins)
    s[f"{prefix}decision_brier"] = brier_score(q, g)
    # Split the Brier score: for two labels the positive label's event (what decision_brier
    # scores), else the sum of each label's one-vs-rest split (the N-label Brier is that sum).
    events = [0] if k == 2 else range(k)
    split = np.sum([brier_decomposition(q[:, j], (g == j).astype(np.float64)) for j in events], axis=0)
    s[f"{prefix}decision_brier_calibration"] = float(split[0])
    s[f"{prefix}decision_brier_discrimination"] = float(split[1])
    s[f"{prefix}decision_brier_uncertainty"] = float(split[2])
    s[f"{prefix}decision_nll"] = negative_log_likelihood(q, g)

    positive = None
    if k == 2:
        y_pos = (g == 0).astype(np.float64)
        positive = reliability_bins(q[:, 0], y_pos, n_bins)
        if 0 < y_pos.sum() < n:
            s[f"{prefix}decision_auroc"] = binary_auroc(y_pos, q[:, 0])
            s[f"{prefix}decision_auprc"] = average_precision(y_pos, q[:, 0])
        else:
            present = labels[0] if y_pos.sum() else labels[1]
            notes.append(f"AUROC and AUPRC left out: only {present!r} occurs in the ground truth")

    for j, key in enumerate(keys):
        s[f"{prefix}decision_pred_rate_{key}"] = float(np.mean(pred == j))
        s[f"{prefix}decision_true_rate_{key}"] = float(np.mean(g == j))

    log_p = np.log(np.maximum(p, _TINY))
    temp = fit_temperature(log_p, g)
    q_t = _softmax(log_p / temp)
    pred_t = q_t.argmax(axis=1)
    bins_t = reliability_bins(q_t.max(axis=1), (pred_t == g).astype(np.float64), n_bins)
    s[f"{prefix}decision_temperature"] = temp
    s[f"{prefix}decision_ece_temp"] = calibration_errors(bins_t)[0]

    edges = bin_edges(hist_bins)
    # Clip: rows may sum to 1 + 1e-4, and np.histogram drops values outside the edges.
    pc = np.clip(p, 0.0, 1.0)
    hists = {f"p_{key}": Histogram(edges, np.histogram(pc[:, j], bins=edges)[0]) for j, key in enumerate(keys)}
    hists["mass"] = Histogram(edges, np.histogram(np.clip(mass, 0, 1), bins=edges)[0])
    hists["confidence"] = Histogram(edges, np.histogram(np.clip(p_pred, 0, 1), bins=edges)[0])
    curve = smooth_curve(q_conf, correct, width=float(width[0]))
    return DecisionMetrics(list(labels), prefix, s, top, positive, hists, notes, selective.curve, curve)
