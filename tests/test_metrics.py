"""tokcal.core.metrics against independent implementations.

References: scikit-learn (AUROC, AP, Brier, log loss, calibration_curve), torchmetrics
(binary / multiclass calibration error, norm "l1" and "max"), torch LBFGS (temperature),
and plain-Python loops written here from the spec.

Conventions (the spec, and where the libraries differ from it):

* Reliability bins are equal width, bin m = ((m-1)/M, m/M] with 0 in the first bin
  (Guo et al. 2017); edge m is the double nearest m/M. A confidence exactly on an edge
  goes to the bin below it.
  - torchmetrics uses ``torch.bucketize(..., right=True)``, i.e. bins [lo, hi), and puts a
    confidence of exactly 1.0 into an extra (M+1)-th bin. Its multiclass path also casts
    confidences to float32. So torchmetrics is compared only on data with no confidence
    on an edge and none equal to 1 (random data), at float32 tolerance for multiclass;
    data on edges are checked against ``loop_bins`` below.
  - sklearn's ``calibration_curve(strategy="uniform")`` is right-closed like the spec,
    but its edges come from ``np.linspace``, which for some M (6, 12, 14, ...) lies one ulp
    below m/M; for M = 5 and M = 15 the two agree, so it is compared there on edge data.
* NLL clips the probability of the true label to [eps, 1 - eps], eps = float64 machine
  epsilon, as sklearn's ``log_loss`` (>= 1.5) does, so a true label with q = 0 costs
  -log(eps) ~ 36.04 rather than inf.
* Temperature is searched on [0.01, 100]. When the data are separable (all correct) NLL
  falls as T -> 0 and when all are wrong as T -> inf; T is then clamped to that bound.
* Histograms use ``np.histogram`` semantics: [lo, hi), the last bin closed.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

from tokcal.core.metrics import (
    DecisionMetrics,
    bin_edges,
    calibration_errors,
    compute_metrics,
    reliability_bins,
)
from tokcal.errors import TokcalError

LABELS = {2: ["Accept", "Reject"], 3: ["A", "B", "C"], 4: ["A", "B", "C", "D"]}


# ----------------------------------------------------------------------------- references


def loop_bins(conf, outcome, m_bins):
    """The spec, literally: bin m holds (m-1)/M < c <= m/M; c == 0 goes to bin 1."""
    counts = [0] * m_bins
    sum_c = [0.0] * m_bins
    sum_o = [0.0] * m_bins
    for c, o in zip(map(float, conf), map(float, outcome)):
        hits = [m for m in range(1, m_bins + 1) if (m - 1) / m_bins < c <= m / m_bins or (m == 1 and c == 0.0)]
        assert len(hits) == 1, (c, hits)
        b = hits[0] - 1
        counts[b] += 1
        sum_c[b] += c
        sum_o[b] += o
    conf_m = [sum_c[b] / counts[b] if counts[b] else math.nan for b in range(m_bins)]
    acc_m = [sum_o[b] / counts[b] if counts[b] else math.nan for b in range(m_bins)]
    n = sum(counts)
    gaps = [abs(acc_m[b] - conf_m[b]) for b in range(m_bins) if counts[b]]
    ece = sum(abs(acc_m[b] - conf_m[b]) * counts[b] for b in range(m_bins) if counts[b]) / n
    return counts, conf_m, acc_m, ece, max(gaps)


def loop_hist(x, h_bins):
    """[lo, hi) with the last bin closed, edges m/H."""
    counts = [0] * h_bins
    for v in map(float, x):
        for b in range(h_bins):
            lo, hi = b / h_bins, (b + 1) / h_bins
            if lo <= v < hi or (b == h_bins - 1 and v == hi):
                counts[b] += 1
                break
    return counts


def normalised_rows(p):
    """q = p / row sum, row by row in Python."""
    out = []
    for row in p.tolist():
        s = sum(row)
        out.append([x / s for x in row] if s > 0 else [1.0 / len(row)] * len(row))
    return np.array(out)


def torch_temperature(log_p, gt):
    """argmin_T NLL(softmax(log_p / T)) by LBFGS on log T."""
    z = torch.tensor(log_p, dtype=torch.float64)
    y = torch.tensor(gt, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(torch.exp(log_t.detach()))


def make_data(seed, n, k, mass_low=0.3):
    """Probabilities that are over-confident by T ~ 1.7, with rows summing to mass < 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_model = e / e.sum(axis=1, keepdims=True)
    e_true = np.exp(logits / 1.7 - (logits / 1.7).max(axis=1, keepdims=True))
    p_true = e_true / e_true.sum(axis=1, keepdims=True)
    gt = np.array([rng.choice(k, p=row) for row in p_true])
    mass = rng.uniform(mass_low, 1.0, size=(n, 1))
    return p_model * mass, gt


def key(prefix, name):
    return f"{prefix}{name}"


# ----------------------------------------------------------------------------- random data


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("n", [41, 1000])
def test_scalars_match_references_on_random_data(seed, k, n):
    p, gt = make_data(seed, n, k)
    labels = LABELS[k]
    m = compute_metrics(p, gt, labels, n_missing=3)
    s = m.scalars
    lk = [x.lower() for x in labels]
    q = normalised_rows(p)
    assert (p.sum(axis=1) < 1).all()  # the mass < 1 case really is exercised

    expected_keys = {
        *(f"eval_avg_p_{x}" for x in lk),
        *(f"eval_decision_{x}" for x in ["prob_mass", "confidence", "accuracy", "ece", "mce", "brier", "nll",
                                         "samples", "missing", "nonfinite", "temperature", "ece_temp"]),
        *(f"eval_decision_pred_rate_{x}" for x in lk),
        *(f"eval_decision_true_rate_{x}" for x in lk),
        *(f"eval_decision_{x}" for x in ["balanced_accuracy", "macro_f1", "mcc", "mass_p05", "mass_below_half",
                                         "aurc", "accuracy_cov50", "accuracy_cov80", "accuracy_cov90"]),
        *(f"eval_decision_precision_{x}" for x in lk),
        *(f"eval_decision_recall_{x}" for x in lk),
        # smooth and debiased calibration error, the Brier score's split (checked against their
        # authors' packages in tests/test_smooth_calibration.py)
        *(f"eval_decision_{x}" for x in ["smece", "ece_debiased", "brier_calibration", "brier_discrimination",
                                         "brier_uncertainty"]),
    }
    if k == 2:
        expected_keys |= {"eval_decision_best_threshold", "eval_decision_best_threshold_accuracy"}
    both_classes = k == 2 and 0 < (gt == 0).sum() < n
    if both_classes:
        expected_keys |= {"eval_decision_auroc", "eval_decision_auprc"}
    assert set(s) == expected_keys

    # Plain means, written as Python loops.
    rows = p.tolist()
    for j, x in enumerate(lk):
        assert s[f"eval_avg_p_{x}"] == pytest.approx(sum(r[j] for r in rows) / n, rel=1e-12)
    assert s["eval_decision_prob_mass"] == pytest.approx(sum(sum(r) for r in rows) / n, rel=1e-12)
    assert s["eval_decision_confidence"] == pytest.approx(sum(max(r) for r in rows) / n, rel=1e-12)
    pred = [r.index(max(r)) for r in rows]
    assert s["eval_decision_accuracy"] == pytest.approx(sum(a == b for a, b in zip(pred, gt)) / n, abs=0)
    pc, tc = Counter(pred), Counter(gt.tolist())
    for j, x in enumerate(lk):
        assert s[f"eval_decision_pred_rate_{x}"] == pc[j] / n
        assert s[f"eval_decision_true_rate_{x}"] == tc[j] / n
    assert s["eval_decision_samples"] == n and s["eval_decision_missing"] == 3

    # Imbalance-aware metrics: sklearn on (gt, argmax of p).
    assert s["eval_decision_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(gt, pred), rel=1e-12)
    assert s["eval_decision_macro_f1"] == pytest.approx(f1_score(gt, pred, average="macro"), rel=1e-12)
    assert s["eval_decision_mcc"] == pytest.approx(matthews_corrcoef(gt, pred), rel=1e-12, abs=1e-15)
    prec = precision_score(gt, pred, labels=list(range(k)), average=None, zero_division=np.nan)
    rec = recall_score(gt, pred, labels=list(range(k)), average=None, zero_division=np.nan)
    for j, x in enumerate(lk):
        for name, ref in (("precision", prec[j]), ("recall", rec[j])):
            got = s[f"eval_decision_{name}_{x}"]
            assert (math.isnan(got) and math.isnan(ref)) or got == pytest.approx(ref, rel=1e-12), (name, x)
    # Mass tail: the 5th percentile by linear interpolation between order statistics, written out.
    masses = sorted(sum(r) for r in rows)
    h = (n - 1) * 0.05
    lo = math.floor(h)
    p05 = masses[lo] + (h - lo) * (masses[min(lo + 1, n - 1)] - masses[lo])
    assert s["eval_decision_mass_p05"] == pytest.approx(p05, rel=1e-12)
    assert s["eval_decision_mass_below_half"] == sum(m < 0.5 for m in masses) / n
    # Selective prediction on the raw confidence (no ties in these data): a plain loop.
    ranked = sorted(zip((max(r) for r in rows), (a == b for a, b in zip(pred, gt))), key=lambda t: -t[0])
    risks = [sum(not ok for _, ok in ranked[:i]) / i for i in range(1, n + 1)]
    assert s["eval_decision_aurc"] == pytest.approx(sum(risks) / n, rel=1e-12)
    for c in (50, 80, 90):
        kept = math.ceil(c * n / 100)
        assert s[f"eval_decision_accuracy_cov{c}"] == pytest.approx(1 - risks[kept - 1], rel=1e-12)
    assert m.risk_coverage.n.tolist() == [math.ceil(i * n / 20) for i in range(1, 21)]
    np.testing.assert_allclose(m.risk_coverage.risk, [risks[math.ceil(i * n / 20) - 1] for i in range(1, 21)])
    if k == 2:
        # The most accurate threshold on q(positive): every ROC point's accuracy (sklearn).
        y_pos = (gt == 0).astype(int)
        fpr, tpr, _ = roc_curve(y_pos, q[:, 0], drop_intermediate=False)
        n_pos = y_pos.sum()
        best = max((tp * n_pos + (1 - fp) * (n - n_pos)) / n for fp, tp in zip(fpr, tpr))
        assert s["eval_decision_best_threshold_accuracy"] == pytest.approx(best, rel=1e-12)
        t = s["eval_decision_best_threshold"]
        assert np.mean((q[:, 0] >= t) == (y_pos == 1)) == pytest.approx(best, rel=1e-12)

    # Top-label ECE / MCE / bins: the spec loop (exact) and torchmetrics (float32 inside).
    conf = q.max(axis=1)
    correct = (np.array(pred) == gt).astype(float)
    counts, conf_m, acc_m, ece, mce = loop_bins(conf, correct, 15)
    assert m.reliability.counts.tolist() == counts
    np.testing.assert_allclose(m.reliability.confidence, conf_m, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(m.reliability.accuracy, acc_m, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(m.reliability.edges, [i / 15 for i in range(16)])
    assert s["eval_decision_ece"] == pytest.approx(ece, rel=1e-10, abs=1e-14)
    assert s["eval_decision_mce"] == pytest.approx(mce, rel=1e-10, abs=1e-14)
    qt, gtt = torch.tensor(q), torch.tensor(gt)
    tm_ece = float(multiclass_calibration_error(qt, gtt, num_classes=k, n_bins=15, norm="l1"))
    tm_mce = float(multiclass_calibration_error(qt, gtt, num_classes=k, n_bins=15, norm="max"))
    assert s["eval_decision_ece"] == pytest.approx(tm_ece, abs=2e-6)
    assert s["eval_decision_mce"] == pytest.approx(tm_mce, abs=2e-6)

    # Proper scores: sklearn.
    if k == 2:
        y_pos = (gt == 0).astype(int)
        assert s["eval_decision_brier"] == pytest.approx(brier_score_loss(y_pos, q[:, 0]), rel=1e-12)
    else:
        assert s["eval_decision_brier"] == pytest.approx(brier_score_loss(gt, q, labels=list(range(k))), rel=1e-12)
    assert s["eval_decision_nll"] == pytest.approx(log_loss(gt, y_proba=q, labels=list(range(k))), rel=1e-12)

    if both_classes:
        y_pos = (gt == 0).astype(int)
        assert s["eval_decision_auroc"] == pytest.approx(roc_auc_score(y_pos, q[:, 0]), rel=1e-12)
        assert s["eval_decision_auprc"] == pytest.approx(average_precision_score(y_pos, q[:, 0]), rel=1e-12)

    # Temperature: independent LBFGS fit; ECE after scaling with torchmetrics at our T.
    log_p = np.log(p)
    t_ref = torch_temperature(log_p, gt)
    if 0.02 < t_ref < 50:
        assert s["eval_decision_temperature"] == pytest.approx(t_ref, rel=1e-3)
    z = log_p / s["eval_decision_temperature"]
    q_t = np.exp(z - z.max(axis=1, keepdims=True))
    q_t /= q_t.sum(axis=1, keepdims=True)
    tm_ece_t = float(multiclass_calibration_error(torch.tensor(q_t), gtt, num_classes=k, n_bins=15, norm="l1"))
    assert s["eval_decision_ece_temp"] == pytest.approx(tm_ece_t, abs=2e-6)
    assert s["eval_decision_ece_temp"] == pytest.approx(loop_bins(q_t.max(axis=1), correct, 15)[3], abs=1e-12)

    # Histograms: fixed edges, p of each label, mass, raw top-label p.
    assert set(m.histograms) == {*(f"p_{x}" for x in lk), "mass", "confidence"}
    for j, x in enumerate(lk):
        assert m.histograms[f"p_{x}"].counts.tolist() == loop_hist(p[:, j], 20)
    assert m.histograms["mass"].counts.tolist() == loop_hist(p.sum(axis=1), 20)
    assert m.histograms["confidence"].counts.tolist() == loop_hist(p.max(axis=1), 20)
    for h in m.histograms.values():
        np.testing.assert_array_equal(h.edges, [i / 20 for i in range(21)])
        assert h.counts.sum() == n


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_binary_positive_reliability_matches_sklearn_and_torchmetrics(seed, n_bins):
    p, gt = make_data(seed + 10, 800, 2)
    m = compute_metrics(p, gt, ["Accept", "Reject"], n_bins=n_bins)
    q0 = p[:, 0] / (p[:, 0] + p[:, 1])
    y = (gt == 0).astype(int)
    b = m.positive_reliability
    full = b.counts > 0
    prob_true, prob_pred = calibration_curve(y, q0, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(b.accuracy[full], prob_true, rtol=1e-12)
    np.testing.assert_allclose(b.confidence[full], prob_pred, rtol=1e-12)
    counts, conf_m, acc_m, ece, mce = loop_bins(q0, y, n_bins)
    assert b.counts.tolist() == counts
    ece_ours, mce_ours = calibration_errors(b)
    qt, yt = torch.tensor(q0), torch.tensor(y)
    assert ece_ours == pytest.approx(float(binary_calibration_error(qt, yt, n_bins=n_bins, norm="l1")), abs=1e-12)
    assert mce_ours == pytest.approx(float(binary_calibration_error(qt, yt, n_bins=n_bins, norm="max")), abs=1e-12)
    assert (ece_ours, mce_ours) == (pytest.approx(ece, abs=1e-12), pytest.approx(mce, abs=1e-12))


@pytest.mark.parametrize("n_bins", [1, 2, 7, 15, 40])
def test_top_label_bins_other_bin_counts(n_bins):
    p, gt = make_data(5, 600, 3)
    m = compute_metrics(p, gt, LABELS[3], n_bins=n_bins)
    q = normalised_rows(p)
    correct = (q.argmax(axis=1) == gt).astype(float)
    counts, _, _, ece, mce = loop_bins(q.max(axis=1), correct, n_bins)
    assert m.reliability.counts.tolist() == counts
    assert len(m.reliability.edges) == n_bins + 1
    assert m.scalars["eval_decision_ece"] == pytest.approx(ece, abs=1e-12)
    assert m.scalars["eval_decision_mce"] == pytest.approx(mce, abs=1e-12)
    tm = multiclass_calibration_error(torch.tensor(q), torch.tensor(gt), num_classes=3, n_bins=n_bins)
    assert m.scalars["eval_decision_ece"] == pytest.approx(float(tm), abs=2e-6)


def test_auroc_auprc_with_ties_match_sklearn():
    rng = np.random.default_rng(3)
    q0 = rng.integers(0, 11, size=400) / 10  # heavy ties, including exactly 0 and 1
    p = np.stack([q0, 1 - q0], axis=1) * 0.5
    gt = (rng.uniform(size=400) > q0).astype(int)  # label 0 (positive) with prob q0
    m = compute_metrics(p, gt, ["Yes", "No"])
    y = (gt == 0).astype(int)
    q_ref = p[:, 0] / (p[:, 0] + p[:, 1])
    assert m.scalars["eval_decision_auroc"] == pytest.approx(roc_auc_score(y, q_ref), rel=1e-12)
    assert m.scalars["eval_decision_auprc"] == pytest.approx(average_precision_score(y, q_ref), rel=1e-12)
    assert "eval_avg_p_yes" in m.scalars and "eval_decision_pred_rate_no" in m.scalars


# ----------------------------------------------------------------------------- edge cases


def _exact_rows(confs):
    """Binary rows [c, 1 - c] whose sum is exactly 1 (so q == c bit for bit)."""
    p = np.array([[c, 1 - c] for c in confs])
    assert (p.sum(axis=1) == 1.0).all() and (p[:, 0] / p.sum(axis=1) == np.array(confs)).all()
    return p


@pytest.mark.parametrize("n_bins", [5, 6, 12, 15])
def test_confidences_exactly_on_bin_edges(n_bins):
    # Top-label confidences m/M for every m with m/M >= 0.5 (binary top label), both correct and wrong.
    confs = [m / n_bins for m in range(n_bins + 1) if m / n_bins >= 0.5]
    p = _exact_rows(confs + confs)
    gt = np.array([0] * len(confs) + [1] * len(confs))
    m = compute_metrics(p, gt, ["Accept", "Reject"], n_bins=n_bins)
    counts, conf_m, acc_m, ece, mce = loop_bins(p.max(axis=1), (p.argmax(axis=1) == gt), n_bins)
    assert m.reliability.counts.tolist() == counts
    # Each edge confidence m/M lands in bin m (1-based), i.e. the bin it closes.
    for c in confs:
        mm = round(c * n_bins)
        assert m.reliability.counts[mm - 1] == 2
    np.testing.assert_allclose(m.reliability.confidence, conf_m, rtol=1e-15, equal_nan=True)
    assert m.scalars["eval_decision_ece"] == pytest.approx(ece, abs=1e-15)
    assert m.scalars["eval_decision_mce"] == pytest.approx(mce, abs=1e-15)

    # Positive-class reliability over all edges 0, 1/M, ..., 1 (0 goes to the first bin).
    allc = [i / n_bins for i in range(n_bins + 1)]
    p2 = np.array([[c, 1 - c] for c in allc])
    q0 = p2[:, 0] / p2.sum(axis=1)
    y = np.array([i % 2 for i in range(len(allc))])
    m2 = compute_metrics(p2, 1 - y, ["Accept", "Reject"], n_bins=n_bins)
    counts2, conf2, acc2, _, _ = loop_bins(q0, y, n_bins)
    assert m2.positive_reliability.counts.tolist() == counts2
    np.testing.assert_allclose(m2.positive_reliability.accuracy, acc2, equal_nan=True)
    if np.array_equal(np.linspace(0, 1, n_bins + 1), np.arange(n_bins + 1) / n_bins):
        # sklearn's edges coincide with m/M here, and it is right-closed like the spec.
        full = m2.positive_reliability.counts > 0
        prob_true, prob_pred = calibration_curve(y, q0, n_bins=n_bins, strategy="uniform")
        np.testing.assert_allclose(m2.positive_reliability.accuracy[full], prob_true)
        np.testing.assert_allclose(m2.positive_reliability.confidence[full], prob_pred)


def test_top_label_edge_below_one_half():
    # 0.4 with M = 5 (a three-way tie is broken towards the first label, conf = 0.4).
    p = np.array([[0.4, 0.4, 0.2], [0.4, 0.2, 0.4], [0.2, 0.4, 0.4], [0.6, 0.2, 0.2]])
    assert (p.sum(axis=1) == 1.0).all()
    gt = np.array([0, 1, 1, 0])
    m = compute_metrics(p, gt, LABELS[3], n_bins=5)
    assert m.reliability.counts.tolist() == [0, 3, 1, 0, 0]  # 0.4 in (0.2, 0.4], 0.6 in (0.4, 0.6]
    counts, _, _, ece, mce = loop_bins([0.4, 0.4, 0.4, 0.6], [1, 0, 1, 1], 5)
    assert m.reliability.counts.tolist() == counts
    assert m.scalars["eval_decision_ece"] == pytest.approx(ece, abs=1e-15)
    assert m.scalars["eval_decision_ece"] == pytest.approx((3 * abs(2 / 3 - 0.4) + 1 * 0.4) / 4)
    assert m.scalars["eval_decision_mce"] == pytest.approx(mce)


def test_bin_edges_are_exact_fractions():
    for n_bins in range(1, 60):
        e = bin_edges(n_bins)
        assert e.tolist() == [i / n_bins for i in range(n_bins + 1)]
    # 5/6 closes bin 5 of 6 (np.linspace's edge 5 is one ulp below 5/6).
    b = reliability_bins(np.array([5 / 6, 0.0, 1.0]), np.array([1, 0, 1]), 6)
    assert b.counts.tolist() == [1, 0, 0, 0, 1, 1]


def test_all_correct():
    p = _exact_rows([0.5 + 0.5 * i / 9 for i in range(1, 10)]) * 0.5  # mass 0.5
    gt = np.zeros(9, dtype=int)
    m = compute_metrics(p, gt, ["Accept", "Reject"])
    s = m.scalars
    q = p / p.sum(axis=1, keepdims=True)
    assert s["eval_decision_accuracy"] == 1.0
    assert s["eval_decision_prob_mass"] == pytest.approx(0.5)
    assert s["eval_decision_ece"] == pytest.approx(loop_bins(q.max(axis=1), np.ones(9), 15)[3], abs=1e-15)
    assert s["eval_decision_ece"] == pytest.approx(float(np.mean(1 - q.max(axis=1))))  # every bin under-confident
    assert s["eval_decision_nll"] == pytest.approx(log_loss(gt, y_proba=q, labels=[0, 1]), rel=1e-12)
    assert s["eval_decision_brier"] == pytest.approx(brier_score_loss(1 - gt, q[:, 0]), rel=1e-12)
    # Only one class in the ground truth: AUROC/AUPRC left out, with a note.
    assert "eval_decision_auroc" not in s and "eval_decision_auprc" not in s
    assert any("AUROC" in n and "Accept" in n for n in m.notes)
    # Separable: NLL keeps falling as T -> 0, so T sits at the lower bound.
    assert s["eval_decision_temperature"] == pytest.approx(0.01, rel=1e-3)


def test_all_wrong():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1, 1], size=50) * 0.9
    gt = (p.argmax(axis=1) + 1) % 4
    m = compute_metrics(p, gt, LABELS[4])
    s = m.scalars
    q = normalised_rows(p)
    assert s["eval_decision_accuracy"] == 0.0
    assert s["eval_decision_ece"] == pytest.approx(float(q.max(axis=1).mean()), rel=1e-12)
    tm = multiclass_calibration_error(torch.tensor(q), torch.tensor(gt), num_classes=4, n_bins=15, norm="max")
    assert s["eval_decision_mce"] == pytest.approx(float(tm), abs=2e-6)
    assert s["eval_decision_nll"] == pytest.approx(log_loss(gt, y_proba=q, labels=[0, 1, 2, 3]), rel=1e-12)
    # Always wrong: flatter is always better, T sits at the upper bound and ECE_T ~ |0 - 1/4|.
    assert s["eval_decision_temperature"] == pytest.approx(100.0, rel=1e-3)
    assert s["eval_decision_ece_temp"] == pytest.approx(0.25, abs=0.01)
    assert not any(k.endswith(("auroc", "auprc")) for k in s)


def test_one_sample_and_one_class_multiclass():
    m = compute_metrics(np.array([[0.1, 0.6, 0.2]]), np.array([1]), LABELS[3])
    s = m.scalars
    q1 = 0.6 / 0.9
    assert s["eval_decision_samples"] == 1 and s["eval_decision_accuracy"] == 1.0
    assert s["eval_decision_ece"] == pytest.approx(1 - q1) and s["eval_decision_mce"] == pytest.approx(1 - q1)
    assert s["eval_decision_confidence"] == pytest.approx(0.6)
    assert s["eval_decision_nll"] == pytest.approx(-math.log(q1))
    assert s["eval_decision_brier"] == pytest.approx((0.1 / 0.9) ** 2 + (1 - q1) ** 2 + (0.2 / 0.9) ** 2)
    assert s["eval_decision_true_rate_b"] == 1.0 and s["eval_decision_pred_rate_c"] == 0.0
    assert m.positive_reliability is None and m.notes == []  # binary-only, nothing to note


def test_probabilities_exactly_zero_and_one():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.97, 0.03]])
    gt = np.array([0, 0, 0, 1, 0])
    m = compute_metrics(p, gt, ["Accept", "Reject"], n_bins=15)
    s = m.scalars
    q = normalised_rows(p)  # the zero-mass row is uniform
    assert q[3].tolist() == [0.5, 0.5]
    # -log(0) is clipped to -log(eps), exactly as sklearn.
    assert s["eval_decision_nll"] == pytest.approx(log_loss(gt, y_proba=q, labels=[0, 1]), rel=1e-12)
    eps = np.finfo(np.float64).eps
    assert s["eval_decision_nll"] == pytest.approx((-math.log(eps) + math.log(2) - math.log(0.97) - 2 * math.log1p(-eps)) / 5)
    assert s["eval_decision_brier"] == pytest.approx(brier_score_loss((gt == 0).astype(int), q[:, 0]), rel=1e-12)
    y = (gt == 0).astype(int)
    assert s["eval_decision_auroc"] == pytest.approx(roc_auc_score(y, q[:, 0]))
    assert s["eval_decision_auprc"] == pytest.approx(average_precision_score(y, q[:, 0]))
    # Confidence 1.0 shares the last bin (14/15, 1] with 0.97 (torchmetrics would put 1.0 in
    # a bin of its own and report a different ECE here; the spec loop is the reference).
    counts, _, _, ece, mce = loop_bins(q.max(axis=1), q.argmax(axis=1) == gt, 15)
    assert m.reliability.counts.tolist() == counts and counts[-1] == 4 and counts[7] == 1
    assert s["eval_decision_ece"] == pytest.approx(ece, abs=1e-15)
    assert s["eval_decision_mce"] == pytest.approx(mce, abs=1e-15)
    # Histograms keep 0 and 1 (first and last bin), nothing falls off the edges.
    assert m.histograms["p_accept"].counts[0] == 2 and m.histograms["p_accept"].counts[-1] == 3
    assert all(h.counts.sum() == 5 for h in m.histograms.values())
    assert math.isfinite(s["eval_decision_temperature"]) and math.isfinite(s["eval_decision_ece_temp"])


def test_rows_summing_slightly_above_one_stay_in_histograms():
    p = np.array([[1.00005, 0.0], [0.2, 0.7]])
    m = compute_metrics(p, np.array([0, 1]), ["Accept", "Reject"])
    assert all(h.counts.sum() == 2 for h in m.histograms.values())
    assert m.histograms["p_accept"].counts[-1] == 1


def test_prefix_and_labels_are_keyed():
    p, gt = make_data(0, 30, 4)
    m = compute_metrics(p, gt, ["A", "B", "C", "D"], prefix="eval_run1_")
    assert m.prefix == "eval_run1_"
    assert all(k.startswith("eval_run1_") for k in m.scalars)
    assert {"eval_run1_avg_p_a", "eval_run1_decision_pred_rate_d", "eval_run1_decision_ece_temp"} <= set(m.scalars)
    assert m.positive_reliability is None


# ----------------------------------------------------------------------------- empty / validation


@pytest.mark.parametrize("probs", [np.empty((0, 2)), np.asarray([]), []])
def test_empty_input_reports_counts_only(probs):
    m = compute_metrics(probs, np.asarray([], dtype=int), ["Accept", "Reject"], n_missing=4)
    assert m.scalars == {"eval_decision_samples": 0.0, "eval_decision_missing": 4.0, "eval_decision_nonfinite": 0.0}
    assert m.reliability is None and m.positive_reliability is None and m.histograms == {}
    assert len(m.notes) == 1
    back = DecisionMetrics.from_dict(json.loads(json.dumps(m.to_dict(), allow_nan=False)))
    assert back.scalars == m.scalars and back.reliability is None and back.notes == m.notes


@pytest.mark.parametrize(
    "probs, gt, kwargs, match",
    [
        (np.full((3, 3), 0.2), [0, 1, 0], {}, r"expected probs of shape \(N, 2\), got \(3, 3\)"),
        (np.full((3,), 0.2), [0, 1, 0], {}, r"expected probs of shape \(N, 2\), got \(3,\)"),
        (np.full((3, 2, 1), 0.2), [0, 1, 0], {}, r"expected probs of shape \(N, 2\), got \(3, 2, 1\)"),
        (np.full((3, 2), 0.2), [0, 1], {}, r"expected gt of shape \(3,\), got \(2,\)"),
        (np.full((3, 2), 0.2), [[0], [1], [0]], {}, r"expected gt of shape \(3,\), got \(3, 1\)"),
        (np.full((3, 2), 0.2), [0, 2, 0], {}, r"expected gt in \[0, 1\], got values \[0, 2\]"),
        (np.full((3, 2), 0.2), [0, -1, 0], {}, r"expected gt in \[0, 1\], got values \[-1, 0\]"),
        (np.full((3, 2), 0.2), [0, 0.5, 0], {}, r"expected integer label indices in gt, got dtype float64"),
        (np.full((3, 2), 0.2), [0, np.nan, 0], {}, r"expected integer label indices in gt, got"),
        ([[0.2, 0.2], [-0.1, 0.5], [0.2, 0.2]], [0, 1, 0], {}, r"expected finite probabilities >= 0, got -0.1"),
        ([[0.2, 0.2], [np.nan, 0.5], [0.2, 0.2]], [0, 1, 0], {}, r"expected finite probabilities >= 0, got nan"),
        ([[0.2, np.inf], [0.1, 0.5], [0.2, 0.2]], [0, 1, 0], {}, r"expected finite probabilities >= 0, got inf"),
        ([[0.2, 0.2], [0.6, 0.5], [0.2, 0.2]], [0, 1, 0], {}, r"expected rows of probs to sum to at most 1, got 1.1"),
        (np.full((3, 2), 0.2), [0, 1, 0], {"n_bins": 0}, r"expected n_bins >= 1, got 0"),
        (np.full((3, 2), 0.2), [0, 1, 0], {"n_bins": -3}, r"expected n_bins >= 1, got -3"),
        (np.full((3, 2), 0.2), [0, 1, 0], {"n_bins": 2.5}, r"expected n_bins >= 1, got 2.5"),
        (np.full((3, 2), 0.2), [0, 1, 0], {"hist_bins": 0}, r"expected hist_bins >= 1, got 0"),
    ],
)
def test_invalid_input_raises(probs, gt, kwargs, match):
    with pytest.raises(TokcalError, match=match) as info:
        compute_metrics(probs, np.asarray(gt), ["Accept", "Reject"], **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("expected ") and ", got " in str(info.value)


def test_integer_valued_float_gt_is_accepted():
    p = np.array([[0.7, 0.2], [0.3, 0.6]])
    a = compute_metrics(p, np.array([0.0, 1.0]), ["Accept", "Reject"]).scalars
    b = compute_metrics(p, np.array([0, 1]), ["Accept", "Reject"]).scalars
    assert a == b


# ----------------------------------------------------------------------------- serialisation


def test_to_dict_from_dict_round_trip():
    p, gt = make_data(1, 200, 2)
    m = compute_metrics(p, gt, ["Accept", "Reject"], n_bins=30)  # 30 bins: some are empty -> NaN
    assert np.isnan(m.reliability.confidence).any()
    m.scalars["eval_decision_something_nan"] = math.nan
    text = json.dumps(m.to_dict(), allow_nan=False)  # raises if a NaN slipped through
    d = json.loads(text)
    assert d["scalars"]["eval_decision_something_nan"] is None
    assert None in d["reliability"]["confidence"]
    back = DecisionMetrics.from_dict(d)
    assert back.labels == m.labels and back.prefix == m.prefix and back.notes == m.notes
    assert back.scalars.keys() == m.scalars.keys()
    for k, v in m.scalars.items():
        assert (math.isnan(v) and math.isnan(back.scalars[k])) or back.scalars[k] == v
    for a, b in [(m.reliability, back.reliability), (m.positive_reliability, back.positive_reliability)]:
        for f in ("edges", "counts", "confidence", "accuracy"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert b.counts.dtype.kind == "i"
    assert back.histograms.keys() == m.histograms.keys()
    for k, h in m.histograms.items():
        np.testing.assert_array_equal(h.edges, back.histograms[k].edges)
        np.testing.assert_array_equal(h.counts, back.histograms[k].counts)
    assert json.dumps(back.to_dict(), allow_nan=False) == text
    rows = back.reliability.rows()
    assert len(rows) == 30 and rows[-1]["upper"] == 1.0 and sum(r["count"] for r in rows) == 200
