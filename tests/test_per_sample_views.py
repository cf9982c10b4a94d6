"""The report's per-sample numbers (tokcal.core.per_sample_views) against brute-force
loops over the decisions, on random evaluations where samples come and go and confidences
tie, and on the edge cases (one evaluation, one sample, all correct, nothing wrong)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokcal.core.per_sample import PerSample
from tokcal.core.per_sample_views import (
    confidently_wrong,
    learning_heatmap,
    sample_risk_coverage,
    sample_trajectories,
)
from tokcal.core.selective import risk_coverage_curve
from tokcal.errors import TokcalError

LABELS = ["Accept", "Reject", "Revise"]


def random_evals(seed: int, n_samples: int = 30, n_steps: int = 6, k: int = 3, keep: float = 0.8,
                 decimals: int = 1, turns: bool = False) -> list[tuple[int, PerSample]]:
    """Samples missing at random steps, probabilities rounded so that confidences tie."""
    rng = np.random.default_rng(seed)
    gt_of = rng.integers(0, k, n_samples)
    out, step = [], 0
    for _ in range(n_steps):
        step += int(rng.integers(0, 3)) * 10  # repeated steps allowed (non-decreasing)
        idx = np.flatnonzero(rng.random(n_samples) < keep)
        raw = np.round(rng.dirichlet(np.ones(k), len(idx)) * rng.uniform(0.5, 1.0, (len(idx), 1)), decimals)
        raw = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1.0)
        turn = (idx % 2) if turns else None
        text = [f"<b>review {i}</b> & more" for i in idx]
        out.append((step, PerSample(LABELS[:k], idx, gt_of[idx], raw, turn, None, text)))
    return out


def brute_heatmap(evals):
    """Row per key: q(true) per step, learned step, never learned, sorted as documented."""
    per_key: dict[int, dict[int, tuple[float, bool]]] = {}
    names = {}
    for t, (_, rec) in enumerate(evals):
        for i in range(len(rec)):
            p = rec.probs[i]
            mass = p.sum()
            q = p[rec.gt[i]] / mass if mass > 0 else 1 / len(p)
            pred = max(range(len(p)), key=lambda j: (p[j], -j))  # argmax, ties to the first
            key = int(rec.index[i]) * (1 << 20) + int(rec.turn[i])
            per_key.setdefault(key, {})[t] = (q, pred == rec.gt[i])
            names[key] = (str(rec.ids[i]) if rec.ids is not None else f"#{rec.index[i]}") + \
                (f" (turn {rec.turn[i]})" if rec.turn[i] else "")
    rows = []
    for key, seen in per_key.items():
        ts = sorted(seen)
        flags = [seen[t][1] for t in ts]
        learned = math.nan
        if flags[-1]:
            j = len(flags) - 1
            while j > 0 and flags[j - 1]:
                j -= 1
            learned = float(evals[ts[j]][0])
        never = not any(flags)
        mean_q = sum(seen[t][0] for t in ts) / len(ts)
        q_row = [seen[t][0] if t in seen else math.nan for t in range(len(evals))]
        rows.append(((math.inf if math.isnan(learned) else learned, never, -mean_q, key), key, q_row, learned, never))
    rows.sort(key=lambda r: r[0])
    return rows, names


def brute_flips(evals):
    last: dict[int, bool] = {}
    ever: dict[int, bool] = {}
    out = []
    for _, rec in evals:
        tw = tr = fg = 0
        for i in range(len(rec)):
            key = int(rec.keys[i])
            ok = bool(rec.correct[i])
            if key in last:
                tw += last[key] and not ok
                tr += (not last[key]) and ok
            fg += (not ok) and ever.get(key, False)
            last[key] = ok
            ever[key] = ever.get(key, False) or ok
        out.append((tw, tr, fg))
    return out


def brute_wrong(evals, k):
    cand = []
    for step, rec in evals:
        for i in range(len(rec)):
            p = rec.probs[i]
            pred = max(range(len(p)), key=lambda j: (p[j], -j))
            if pred != rec.gt[i]:
                conf = p[pred] / p.sum() if p.sum() > 0 else 1 / len(p)
                cand.append((conf, step, int(rec.keys[i]), pred, rec.text[i] if rec.text else None))
    # highest confidence, then later step, then smaller key
    cand.sort(key=lambda c: (-c[0], -c[1], c[2]))
    return cand[:k]


@pytest.mark.parametrize("seed", range(8))
def test_heatmap_matches_brute_force(seed):
    evals = random_evals(seed, turns=seed % 2 == 1)
    h = learning_heatmap(evals)
    rows, names = brute_heatmap(evals)
    assert h.keys.tolist() == [r[1] for r in rows]
    np.testing.assert_allclose(h.q_true, np.array([r[2] for r in rows]), rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(h.first_learned, np.array([r[3] for r in rows]))
    assert h.never_learned.tolist() == [r[4] for r in rows]
    assert h.names == [names[r[1]] for r in rows]
    assert h.steps.tolist() == [float(s) for s, _ in evals]
    assert np.isnan(h.q_true).any(), "the random data should leave samples out at some steps"


@pytest.mark.parametrize("seed", range(8))
def test_flips_match_brute_force(seed):
    evals = random_evals(seed + 100, keep=0.7)
    t = sample_trajectories(evals)
    got = list(zip(t.flips_to_wrong.tolist(), t.flips_to_right.tolist(), t.forgotten.tolist()))
    assert got == brute_flips(evals)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 5, 10, 1000])
def test_confidently_wrong_matches_brute_force(seed, k):
    evals = random_evals(seed + 200, decimals=1)
    got = confidently_wrong(evals, k=k)
    want = brute_wrong(evals, k)
    assert [(w.step, w.key, w.pred, w.text) for w in got] == [(c[1], c[2], c[3], c[4]) for c in want]
    np.testing.assert_allclose([w.confidence for w in got], [c[0] for c in want], rtol=1e-12)
    # Ties exist in this data, and they are broken as documented.
    confs = [round(c[0], 12) for c in brute_wrong(evals, 10**6)]
    assert len(set(confs)) < len(confs)
    for w in got:
        step_rec = [r for s, r in evals if s == w.step]
        rows = [(r, i) for r in step_rec for i in np.flatnonzero(r.keys == w.key)]
        assert any(np.array_equal(r.probs[i], w.probs) and r.gt[i] == w.gt != w.pred for r, i in rows)


def test_last_step_only():
    """The report lists the wrong decisions of the selected evaluation: pass only that one."""
    evals = random_evals(3)
    got = confidently_wrong(evals[-1:], k=1000)
    assert {w.step for w in got} == {evals[-1][0]}
    assert len(got) == int((~evals[-1][1].correct).sum())


def one(p, gt, index=None, ids=None):
    p = np.asarray(p, dtype=float)
    return PerSample(["A", "B"], np.arange(len(p)) if index is None else index, gt, p, ids=ids)


def test_edge_cases():
    # one evaluation, one sample, wrong
    h = learning_heatmap([(5, one([[0.2, 0.7]], [0]))])
    assert h.q_true.shape == (1, 1) and h.q_true[0, 0] == pytest.approx(0.2 / 0.9)
    assert math.isnan(h.first_learned[0]) and h.never_learned.tolist() == [True]
    (w,) = confidently_wrong([(5, one([[0.2, 0.7]], [0], ids=["paper-7"]))])
    assert (w.name, w.step, w.gt, w.pred, w.text) == ("paper-7", 5, 0, 1, None)
    assert w.confidence == pytest.approx(0.7 / 0.9)
    # all correct: nothing wrong, everything learned at the first step, no flips
    evals = [(s, one([[0.9, 0.1], [0.2, 0.8]], [0, 1])) for s in (0, 10, 20)]
    assert confidently_wrong(evals) == []
    h = learning_heatmap(evals)
    assert h.first_learned.tolist() == [0.0, 0.0] and not h.never_learned.any()
    t = sample_trajectories(evals)
    assert t.flips_to_wrong.tolist() == t.flips_to_right.tolist() == t.forgotten.tolist() == [0, 0, 0]
    # a sample that appears only later: NaN before; zero mass counts as uniform
    late = [(0, one([[0.9, 0.1]], [0])), (10, one([[0.9, 0.1], [0.0, 0.0]], [0, 1]))]
    h = learning_heatmap(late)
    assert np.isnan(h.q_true[h.keys.tolist().index(1 << 20), 0])
    assert h.q_true[h.keys.tolist().index(1 << 20), 1] == 0.5
    # an empty evaluation among others
    h = learning_heatmap([(0, one(np.zeros((0, 2)), np.zeros(0, int))), (1, one([[0.6, 0.4]], [0]))])
    assert h.q_true.shape == (1, 2) and np.isnan(h.q_true[0, 0])


def test_risk_coverage_matches_compute_metrics():
    from tokcal.core.metrics import compute_metrics

    for seed in range(4):
        _, rec = random_evals(seed + 300, n_steps=1, keep=1.0, k=2)[0]
        m = compute_metrics(rec.probs, rec.gt, rec.labels)
        rc = sample_risk_coverage(rec)
        np.testing.assert_allclose(rc.risk, m.risk_coverage.risk)
        np.testing.assert_array_equal(rc.n, m.risk_coverage.n)
    # against a plain loop: the error rate of the n most confident (no ties here)
    conf = np.array([0.9, 0.8, 0.7, 0.6])  # P of the predicted label (A)
    ok = np.array([True, False, True, True])
    rec = one(np.stack([conf, 1 - conf], axis=1), np.where(ok, 0, 1))
    rc = sample_risk_coverage(rec, points=4)
    want = [sum(not ok[j] for j in range(n)) / n for n in range(1, 5)]
    np.testing.assert_allclose(rc.risk, want)
    np.testing.assert_allclose(rc.risk, risk_coverage_curve(conf, ok, 4).risk)
    assert sample_risk_coverage(one(np.zeros((0, 2)), np.zeros(0, int))) is None


def test_bad_input():
    rec = one([[0.9, 0.1]], [0])
    with pytest.raises(TokcalError, match="at least one"):
        learning_heatmap([])
    with pytest.raises(TokcalError, match="non-decreasing"):
        learning_heatmap([(10, rec), (5, rec)])
    with pytest.raises(TokcalError, match="labels"):
        learning_heatmap([(0, rec), (1, PerSample(["X", "Y"], [0], [0], [[0.5, 0.5]]))])
    with pytest.raises(TokcalError, match="pairs"):
        confidently_wrong([rec])
    with pytest.raises(TokcalError, match="k >= 1"):
        confidently_wrong([(0, rec)], k=0)
    with pytest.raises(TokcalError, match="unique"):
        learning_heatmap([(0, PerSample(["A", "B"], [3, 3], [0, 0], [[0.9, 0.1], [0.9, 0.1]], [0, 0]))])
    with pytest.raises(TokcalError, match="PerSample"):
        sample_risk_coverage("x")
