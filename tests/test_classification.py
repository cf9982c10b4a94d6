"""tokcal.core.classification against scikit-learn and brute-force loops.

Conventions checked here (the module docstring states them): precision of a label never
predicted and recall of a label never true are NaN (sklearn ``zero_division=np.nan``);
balanced accuracy averages recall over the labels in the truth and macro F1 over the
labels in the truth or the predictions (sklearn's defaults); MCC is 0 when the truth or
the predictions are constant (sklearn). The best threshold has no sklearn counterpart: its
accuracy is checked against every ROC point (sklearn) and a loop over thresholds, its
tie rule against a loop over the distinct prediction sets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_curve,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import (
    matthews_corrcoef as sk_mcc,
)

from tokcal.core.classification import (
    balanced_accuracy,
    best_threshold,
    confusion_matrix,
    macro_f1,
    matthews_corrcoef,
    precision_recall,
)
from tokcal.errors import TokcalError

# sklearn warns about one-label and absent-label inputs, which are the edge cases tested here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:sklearn.*")


def nan_equal(a, b, rel=1e-12):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=1e-15)


def check_against_sklearn(gt, pred, k):
    cm = confusion_matrix(gt, pred, k)
    labels = list(range(k))
    np.testing.assert_array_equal(cm, sk_confusion_matrix(gt, pred, labels=labels))
    assert nan_equal(balanced_accuracy(cm), balanced_accuracy_score(gt, pred))
    assert nan_equal(macro_f1(cm), f1_score(gt, pred, average="macro"))
    # The same with every label listed: absent labels are NaN and left out of the mean.
    assert nan_equal(macro_f1(cm), f1_score(gt, pred, labels=labels, average="macro", zero_division=np.nan))
    assert nan_equal(matthews_corrcoef(cm), sk_mcc(gt, pred))
    precision, recall = precision_recall(cm)
    ref_p = precision_score(gt, pred, labels=labels, average=None, zero_division=np.nan)
    ref_r = recall_score(gt, pred, labels=labels, average=None, zero_division=np.nan)
    for j in range(k):
        assert nan_equal(precision[j], ref_p[j]) and nan_equal(recall[j], ref_r[j]), j


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("n", [7, 60, 2000])
def test_random_labels_match_sklearn(seed, k, n):
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.ones(k))  # imbalanced at random
    gt = rng.choice(k, size=n, p=prior)
    # A model that is right 60 % of the time and otherwise leans to label 0.
    pred = np.where(rng.uniform(size=n) < 0.6, gt, np.where(rng.uniform(size=n) < 0.7, 0, rng.integers(0, k, n)))
    check_against_sklearn(gt, pred, k)


def test_majority_leaning_model_is_exposed():
    """30 % Accept, the model always answers Reject: accuracy 0.7 looks fine, these do not."""
    gt = np.array([0] * 30 + [1] * 70)
    pred = np.ones(100, dtype=int)
    cm = confusion_matrix(gt, pred, 2)
    assert balanced_accuracy(cm) == 0.5
    assert matthews_corrcoef(cm) == 0.0
    assert macro_f1(cm) == pytest.approx((0 + 2 * 70 / (2 * 70 + 30)) / 2)
    p, r = precision_recall(cm)
    assert math.isnan(p[0]) and r[0] == 0.0 and p[1] == 0.7 and r[1] == 1.0
    check_against_sklearn(gt, pred, 2)


@pytest.mark.parametrize(
    "gt, pred, k",
    [
        ([1, 1, 1, 1], [1, 1, 1, 1], 2),  # one class, all correct
        ([1, 1, 1, 1], [0, 1, 1, 0], 2),  # one class in the truth, both predicted
        ([0, 0, 1, 1], [0, 0, 1, 1], 2),  # all correct
        ([0, 0, 1, 1], [1, 1, 0, 0], 2),  # all wrong: MCC -1
        ([0, 2, 2, 0], [0, 2, 0, 0], 3),  # a label absent from truth and predictions
        ([0, 1, 2, 3], [3, 2, 1, 0], 4),
        ([2], [2], 3),  # one sample
        ([0, 1, 1], [2, 2, 2], 3),  # predicting only a label that never occurs
    ],
)
def test_edge_cases_match_sklearn(gt, pred, k):
    check_against_sklearn(np.array(gt), np.array(pred), k)


def test_edge_case_values():
    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), 2)
    assert matthews_corrcoef(cm) == -1.0 and balanced_accuracy(cm) == 0.0 and macro_f1(cm) == 0.0
    one = confusion_matrix(np.array([1, 1, 1]), np.array([1, 1, 1]), 2)
    assert balanced_accuracy(one) == 1.0 and macro_f1(one) == 1.0 and matthews_corrcoef(one) == 0.0
    p, r = precision_recall(one)
    assert math.isnan(p[0]) and math.isnan(r[0]) and p[1] == r[1] == 1.0
    empty = confusion_matrix(np.zeros(0, dtype=int), np.zeros(0, dtype=int), 2)
    assert empty.tolist() == [[0, 0], [0, 0]]
    assert all(math.isnan(f(empty)) for f in (balanced_accuracy, macro_f1, matthews_corrcoef))
    assert np.isnan(precision_recall(empty)[0]).all()


def test_mcc_does_not_overflow_on_large_counts():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 2, size=3_000_000)
    pred = np.where(rng.uniform(size=gt.size) < 0.8, gt, 1 - gt)
    cm = confusion_matrix(gt, pred, 2)
    assert matthews_corrcoef(cm) == pytest.approx(sk_mcc(gt, pred), rel=1e-9)


@pytest.mark.parametrize(
    "gt, pred, k, match",
    [
        ([[0, 1]], [0, 1], 2, r"expected gt of shape \(N,\), got \(1, 2\)"),
        ([0, 1], [0, 1, 1], 2, r"expected pred of shape \(2,\), got \(3,\)"),
        ([0, 2], [0, 1], 2, r"expected gt in \[0, 1\], got values \[0, 2\]"),
        ([0, 1], [0, -1], 2, r"expected pred in \[0, 1\], got values \[-1, 0\]"),
        ([0.0, 1.0], [0, 1], 2, r"expected integer label indices in gt, got dtype float64"),
        ([0, 1], [0, 1], 0, r"expected n_labels >= 1, got 0"),
    ],
)
def test_confusion_matrix_rejects_bad_input(gt, pred, k, match):
    with pytest.raises(TokcalError, match=match):
        confusion_matrix(np.asarray(gt), np.asarray(pred), k)


# ----------------------------------------------------------------------------- best threshold


def loop_best_accuracy(q, y):
    """Max over every threshold that can matter (0, 1, each score, midpoints) of the accuracy."""
    values = sorted({0.0, 1.0, *map(float, q)})
    cands = values + [(a + b) / 2 for a, b in zip(values, values[1:])]
    return max(sum((qi >= t) == yi for qi, yi in zip(q, y)) / len(q) for t in cands)


def loop_tie_rule(q, y):
    """The documented choice, by brute force: every distinct prediction set a threshold in
    [0, 1] can make, its interval of thresholds (max negative score, min positive score],
    the most accurate ones, the nearest to 0.5 (lowest on a tie), its midpoint."""
    q = [float(x) for x in q]
    options = []
    for t in sorted({0.0, *q}):  # "q >= t" for each t: every prediction set with a positive
        options.append(tuple(qi >= t for qi in q))
    if max(q) < 1.0:
        options.append(tuple(False for _ in q))  # all negative, via a t in (max q, 1]
    best = None
    for pos in dict.fromkeys(options):
        acc = sum(p == yi for p, yi in zip(pos, y)) / len(q)
        lo = max([qi for qi, p in zip(q, pos) if not p], default=0.0)
        hi = min([qi for qi, p in zip(q, pos) if p], default=1.0)
        contains = (lo <= 0.5 <= hi) if not any(not p for p in pos) else (lo < 0.5 <= hi)
        dist = 0.0 if contains else min(abs(lo - 0.5), abs(hi - 0.5))
        key = (-acc, dist, lo)
        if best is None or key < best[0]:
            best = (key, (lo + hi) / 2, acc)
    return best[1], best[2]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [5, 40, 300])
def test_best_threshold_random(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=n) < 0.3
    # Scores that rank the positives higher but sit low (a model leaning to "negative").
    q = np.clip(rng.normal(np.where(y, 0.4, 0.2), 0.15), 0, 1)
    if seed % 2:
        q = np.round(q, 1)  # heavy ties, exact 0s
    t, acc = best_threshold(q, y)
    assert acc == pytest.approx(loop_best_accuracy(q, y), abs=1e-12)
    assert np.mean((q >= t) == y) == pytest.approx(acc, abs=1e-12)
    ref_t, ref_acc = loop_tie_rule(q, y)
    assert (t, acc) == (pytest.approx(ref_t, abs=1e-15), pytest.approx(ref_acc, abs=1e-12))
    if q.max() < 1:  # sklearn's ROC points include "all negative" (threshold inf)
        fpr, tpr, _ = roc_curve(y, q, drop_intermediate=False)
        n_pos = y.sum()
        best = max((tp * n_pos + (1 - fp) * (n - n_pos)) / n for fp, tp in zip(fpr, tpr))
        assert acc == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize(
    "q, y, expected",
    [
        # separable, the gap (0.3, 0.6] holds 0.5: its midpoint
        ([0.1, 0.3, 0.6, 0.9], [0, 0, 1, 1], (0.45, 1.0)),
        # separable far below 0.5: the default rule gets 0.5, a threshold of 0.2 gets 1.0
        ([0.1, 0.15, 0.25, 0.3], [0, 0, 1, 1], (0.2, 1.0)),
        # two equally good gaps, (0.25, 0.375] and (0.625, 0.75], both 0.125 from 0.5 (exact in
        # binary): the lower one
        ([0.25, 0.375, 0.625, 0.75], [0, 1, 0, 1], (0.3125, 0.75)),
        # all positive: the interval [0, 0.2]
        ([0.2, 0.5, 0.9], [1, 1, 1], (0.1, 1.0)),
        # all negative: (0.6, 1]
        ([0.2, 0.4, 0.6], [0, 0, 0], (0.8, 1.0)),
        # all negative wanted, but a score is exactly 1: the best rule keeps q = 1 positive
        ([0.2, 0.4, 1.0], [0, 0, 0], (0.7, 2 / 3)),
        # all scores tied: predict all positive or all negative
        ([0.5, 0.5, 0.5], [1, 0, 1], (0.25, 2 / 3)),
        ([0.5, 0.5, 0.5], [0, 0, 1], (0.75, 2 / 3)),
        # zero scores: "positive iff q >= 0" is the all-positive rule
        ([0.0, 0.0], [1, 1], (0.0, 1.0)),
        ([0.7], [1], (0.35, 1.0)),
    ],
)
def test_best_threshold_known_answers(q, y, expected):
    t, acc = best_threshold(np.array(q), np.array(y))
    assert (t, acc) == (pytest.approx(expected[0], abs=1e-15), pytest.approx(expected[1], abs=1e-15))
    assert (t, acc) == tuple(pytest.approx(v, abs=1e-15) for v in loop_tie_rule(q, y))


def test_best_threshold_does_not_depend_on_order():
    rng = np.random.default_rng(1)
    q = np.round(rng.uniform(size=200), 1)
    y = rng.uniform(size=200) < q
    ref = best_threshold(q, y)
    for _ in range(5):
        o = rng.permutation(200)
        assert best_threshold(q[o], y[o]) == ref


def test_best_threshold_empty_and_bad_input():
    t, acc = best_threshold(np.zeros(0), np.zeros(0, dtype=bool))
    assert math.isnan(t) and math.isnan(acc)
    with pytest.raises(TokcalError, match=r"expected scores in \[0, 1\], got range"):
        best_threshold(np.array([0.2, 1.5]), np.array([0, 1]))
    with pytest.raises(TokcalError, match="expected score and positive of one shape"):
        best_threshold(np.array([0.2, 0.5]), np.array([0, 1, 1]))
