"""tokcal.core.selective against brute force.

The tie rule (decisions with equal confidence form an unordered group; the risk at a cut
inside a group is the expected risk over every order of the group) is checked by
enumerating every order of the tied decisions and averaging: exact, for small N. Without
ties the risk at n is a plain loop over the n most confident.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from tokcal.core.metrics import DecisionMetrics, compute_metrics
from tokcal.core.selective import (
    RiskCoverage,
    accuracy_at_coverage,
    aurc,
    kept_at,
    risk_coverage_curve,
    selective_risks,
    selective_summary,
)
from tokcal.errors import TokcalError


def risks_by_enumeration(conf, correct):
    """Average, over every ordering that sorts by confidence (ties in any order), of the
    error rate among the first n, for n = 1..N."""
    conf = [float(c) for c in conf]
    groups = {}
    for c, ok in zip(conf, correct):
        groups.setdefault(c, []).append(bool(ok))
    keys = sorted(groups, reverse=True)
    per_group = [sorted(set(itertools.permutations(groups[c]))) for c in keys]
    # Weight each distinct permutation by its multiplicity, so this equals all N_g! orders.
    weights = [[math.prod(math.factorial(v) for v in (sum(p), len(p) - sum(p))) for p in perms]
               for perms in per_group]
    n = len(conf)
    total = [0.0] * n
    wsum = 0
    for combo in itertools.product(*[range(len(p)) for p in per_group]):
        order = [ok for g, i in enumerate(combo) for ok in per_group[g][i]]
        w = math.prod(weights[g][i] for g, i in enumerate(combo))
        wrong = 0
        for m, ok in enumerate(order, start=1):
            wrong += not ok
            total[m - 1] += w * wrong / m
        wsum += w
    return [t / wsum for t in total]


@pytest.mark.parametrize("seed", range(12))
def test_ties_match_every_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    conf = rng.choice([0.5, 0.6, 0.75, 0.9], size=n)  # heavy ties
    correct = rng.uniform(size=n) < conf
    ref = risks_by_enumeration(conf, correct)
    np.testing.assert_allclose(selective_risks(conf, correct), ref, rtol=1e-12, atol=1e-15)
    assert aurc(conf, correct) == pytest.approx(sum(ref) / n, rel=1e-12, abs=1e-15)
    for c in (0.5, 0.8, 0.9, 1.0):
        assert accuracy_at_coverage(conf, correct, c) == pytest.approx(1 - ref[math.ceil(c * n) - 1], abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_no_ties_is_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    n = 1000
    conf = rng.uniform(0.5, 1.0, size=n)
    correct = rng.uniform(size=n) < conf
    ranked = sorted(zip(conf.tolist(), correct.tolist()), key=lambda t: -t[0])
    ref = [sum(not ok for _, ok in ranked[:m]) / m for m in range(1, n + 1)]
    np.testing.assert_allclose(selective_risks(conf, correct), ref, rtol=1e-12, atol=1e-15)
    assert aurc(conf, correct) == pytest.approx(sum(ref) / n, rel=1e-12)
    rc = risk_coverage_curve(conf, correct)
    assert rc.coverage.tolist() == [i / 20 for i in range(1, 21)]
    assert rc.n.tolist() == [i * n // 20 for i in range(1, 21)]
    np.testing.assert_allclose(rc.risk, [ref[m - 1] for m in rc.n], rtol=1e-12)
    assert rc.threshold.tolist() == [ranked[m - 1][0] for m in rc.n]
    s = selective_summary(conf, correct)
    assert s.aurc == aurc(conf, correct)
    assert s.accuracy == {c: accuracy_at_coverage(conf, correct, c) for c in (0.5, 0.8, 0.9)}


def test_good_ranking_beats_bad_ranking():
    correct = np.array([True] * 8 + [False] * 2)
    good = np.linspace(1.0, 0.5, 10)  # the two errors are the least confident
    bad = good[::-1]
    assert aurc(good, correct) < aurc(bad, correct)
    assert accuracy_at_coverage(good, correct, 0.8) == 1.0
    assert accuracy_at_coverage(bad, correct, 0.8) == pytest.approx(6 / 8)


def test_order_of_input_does_not_matter():
    rng = np.random.default_rng(7)
    conf = np.round(rng.uniform(0.5, 1, size=300), 1)
    correct = rng.uniform(size=300) < conf
    ref = selective_risks(conf, correct)
    for _ in range(5):
        o = rng.permutation(300)
        np.testing.assert_allclose(selective_risks(conf[o], correct[o]), ref, rtol=1e-12, atol=1e-15)


def test_edge_cases():
    conf = np.array([0.9, 0.7, 0.7, 0.6])
    assert aurc(conf, np.ones(4, bool)) == 0.0 and accuracy_at_coverage(conf, np.ones(4, bool), 0.5) == 1.0
    assert aurc(conf, np.zeros(4, bool)) == 1.0 and accuracy_at_coverage(conf, np.zeros(4, bool), 0.9) == 0.0
    # One confidence for all: every cut has the overall error rate.
    same = np.full(5, 0.8)
    ok = np.array([1, 0, 1, 1, 0], bool)
    np.testing.assert_allclose(selective_risks(same, ok), [0.4] * 5)
    assert aurc(np.array([0.7]), np.array([False])) == 1.0
    # No decisions: NaN and no curve.
    assert math.isnan(aurc(np.zeros(0), np.zeros(0, bool)))
    assert math.isnan(accuracy_at_coverage(np.zeros(0), np.zeros(0, bool), 0.5))
    assert risk_coverage_curve(np.zeros(0), np.zeros(0, bool)) is None
    s = selective_summary(np.zeros(0), np.zeros(0, bool))
    assert math.isnan(s.aurc) and all(math.isnan(v) for v in s.accuracy.values()) and s.curve is None


def test_kept_at_and_bad_input():
    assert [kept_at(c, 30) for c in (0.1, 0.5, 0.8, 0.9, 1.0)] == [3, 15, 24, 27, 30]
    assert kept_at(0.01, 10) == 1 and kept_at(0.55, 3) == 2
    for bad in (0, -0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(TokcalError, match="expected a coverage in"):
            kept_at(bad, 10)
    with pytest.raises(TokcalError, match="expected a coverage in"):
        selective_summary(np.zeros(0), np.zeros(0, bool), coverages=(0.5, 2.0))
    with pytest.raises(TokcalError, match="expected confidence and correct of one shape"):
        aurc(np.array([0.5, 0.6]), np.array([True]))
    with pytest.raises(TokcalError, match="expected finite confidences"):
        aurc(np.array([0.5, np.nan]), np.array([True, False]))
    with pytest.raises(TokcalError, match="expected points >= 1, got 0"):
        risk_coverage_curve(np.array([0.5]), np.array([True]), points=0)


def test_curve_round_trip_and_rows():
    rc = risk_coverage_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 1]), points=4)
    rows = rc.rows()
    assert [r["n"] for r in rows] == [1, 2, 3, 4]
    assert [r["accuracy"] for r in rows] == [1.0, 1.0, pytest.approx(2 / 3), 0.75]
    back = RiskCoverage.from_dict(json.loads(json.dumps(rc.to_dict(), allow_nan=False)))
    for f in ("coverage", "n", "risk", "threshold"):
        np.testing.assert_array_equal(getattr(back, f), getattr(rc, f))


def test_compute_metrics_carries_the_curve_and_old_dicts_still_load():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1], size=50) * 0.9
    gt = rng.integers(0, 2, size=50)
    m = compute_metrics(p, gt, ["Accept", "Reject"])
    conf, correct = p.max(axis=1), p.argmax(axis=1) == gt
    ref = risk_coverage_curve(conf, correct)
    np.testing.assert_array_equal(m.risk_coverage.risk, ref.risk)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    back = DecisionMetrics.from_dict(d)
    np.testing.assert_array_equal(back.risk_coverage.threshold, ref.threshold)
    d.pop("risk_coverage")  # written before the curve existed
    old = DecisionMetrics.from_dict(d)
    assert old.risk_coverage is None and old.scalars == back.scalars
    assert compute_metrics(np.zeros((0, 2)), np.zeros(0, int), ["Accept", "Reject"]).risk_coverage is None
