"""Imbalance-aware classification metrics: numpy arrays in, numbers out.

Accuracy and mean probabilities hide a model that leans to the majority class (a paper
review set is ~30 % Accept: always answering Reject scores 0.70). These metrics do not:
balanced accuracy, macro F1, Matthews correlation, per-label precision and recall, all
from one confusion matrix, and for binary specs the accuracy that the best threshold on
q(positive) would reach.

Where a metric is undefined the result says so instead of guessing:

* precision of a label that is never predicted, and recall of a label that never occurs
  in the truth, are NaN (scikit-learn's ``zero_division=np.nan``);
* balanced accuracy averages the recall of the labels that occur in the truth, macro F1
  the F1 of the labels that occur in the truth or the predictions (scikit-learn's
  defaults; a label absent from both has no F1 and is left out, never counted as 0);
* the Matthews correlation is 0 when the truth or the predictions take a single value
  (scikit-learn's convention: a constant predictor carries no information).

Example:
    >>> cm = confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([1, 1, 1, 1, 1]), 2)
    >>> balanced_accuracy(cm), matthews_corrcoef(cm)
    (0.5, 0.0)
"""

from __future__ import annotations

import math

import numpy as np

from tokcal.errors import TokcalError


def _labels(x: np.ndarray, name: str, n_labels: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise TokcalError(f"expected {name} of shape (N,), got {tuple(a.shape)}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TokcalError(f"expected integer label indices in {name}, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n_labels):
        raise TokcalError(f"expected {name} in [0, {n_labels - 1}], got values {sorted(set(a.tolist()))}")
    return a.astype(np.int64)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """(K, K) counts: row = true label, column = predicted label.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    if not isinstance(n_labels, (int, np.integer)) or isinstance(n_labels, bool) or n_labels < 1:
        raise TokcalError(f"expected n_labels >= 1, got {n_labels!r}")
    g = _labels(gt, "gt", int(n_labels))
    p = _labels(pred, "pred", int(n_labels))
    if g.shape != p.shape:
        raise TokcalError(f"expected pred of shape {g.shape}, got {p.shape}")
    k = int(n_labels)
    return np.bincount(g * k + p, minlength=k * k).reshape(k, k)


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label (precision, recall); NaN for a label never predicted / never true.

    Example:
        >>> p, r = precision_recall(np.array([[1, 0], [1, 1]]))
        >>> p.tolist(), r.tolist()
        ([0.5, 1.0], [1.0, 0.5])
    """
    c = np.asarray(cm, dtype=np.float64)
    tp = np.diag(c)
    predicted, true = c.sum(axis=0), c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), np.nan)
        recall = np.where(true > 0, tp / np.where(true > 0, true, 1), np.nan)
    return precision, recall


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the labels that occur in the truth; NaN with no samples."""
    recall = precision_recall(cm)[1]
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else math.nan


def macro_f1(cm: np.ndarray) -> float:
    """Mean of F1 = 2 TP / (2 TP + FP + FN) over the labels that occur in the truth or the
    predictions; NaN with no samples."""
    c = np.asarray(cm, dtype=np.float64)
    tp = np.diag(c)
    denom = c.sum(axis=0) + c.sum(axis=1)  # = 2 TP + FP + FN
    seen = denom > 0
    return float(np.mean(2 * tp[seen] / denom[seen])) if seen.any() else math.nan


def matthews_corrcoef(cm: np.ndarray) -> float:
    """Matthews correlation (Gorodkin's K-class form; the phi coefficient for two labels).

    0 when the truth or the predictions take one value (the denominator vanishes);
    NaN with no samples.
    """
    c = np.asarray(cm, dtype=np.float64)
    s = c.sum()
    if s == 0:
        return math.nan
    t, p = c.sum(axis=1), c.sum(axis=0)
    cov_tp = np.trace(c) * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / math.sqrt(cov_pp * cov_tt))


def best_threshold(score: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold ``t`` in [0, 1] whose rule "positive iff score >= t" is most accurate.

    The accuracy changes only where ``t`` crosses a score, so the candidates are the
    intervals between consecutive distinct scores: ``[0, u_1]`` (all positive),
    ``(u_i, u_i+1]``, and ``(u_m, 1]`` (all negative; only when no score is exactly 1).
    Among the most accurate intervals the one nearest 0.5 (the default rule) wins, the
    lower one on a tie; ``t`` is its midpoint.

    Args:
        score: (N,) q(positive) in [0, 1].
        positive: (N,) 1 / True where the sample truly is positive.

    Returns:
        ``(t, accuracy)``; ``(nan, nan)`` with no samples.

    Example:
        >>> best_threshold(np.array([0.1, 0.3, 0.4, 0.8]), np.array([0, 1, 1, 1]))
        (0.2, 1.0)
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive).astype(bool)
    if s.ndim != 1 or y.shape != s.shape:
        raise TokcalError(f"expected score and positive of one shape (N,), got {s.shape} and {y.shape}")
    if s.size and (not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1):
        raise TokcalError(f"expected scores in [0, 1], got range [{s.min()!r}, {s.max()!r}]")
    n = len(s)
    if n == 0:
        return math.nan, math.nan
    u, group = np.unique(s, return_inverse=True)
    m = len(u)
    pos = np.bincount(group, weights=y, minlength=m)
    neg = np.bincount(group, weights=~y, minlength=m)
    # Interval j (0..m) predicts positive for groups j..m-1: TP from those, TN from the rest.
    tp = np.r_[np.cumsum(pos[::-1])[::-1], 0.0]
    tn = np.r_[0.0, np.cumsum(neg)]
    correct = tp + tn
    lo = np.r_[0.0, u]
    hi = np.r_[u, 1.0]
    if u[-1] >= 1.0:  # no t in [0, 1] predicts all negative
        correct, lo, hi = correct[:-1], lo[:-1], hi[:-1]
    dist = np.where(hi < 0.5, 0.5 - hi, np.where(lo >= 0.5, lo - 0.5, 0.0))
    best = np.flatnonzero(correct == correct.max())
    j = int(best[np.argmin(dist[best])])  # argmin takes the first (lowest) on a tie
    return float((lo[j] + hi[j]) / 2), float(correct[j] / n)
