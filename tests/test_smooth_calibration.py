"""Smooth ECE, debiased ECE and the Brier score's split, each against its authors' package:
relplot (Błasiok and Nakkiran), uncertainty-calibration (Kumar et al.), model-diagnostics
(the CORP decomposition); the smoothed reliability curve against relplot's regression."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokcal.core.metrics import (
    DecisionMetrics,
    brier_decomposition,
    compute_metrics,
    debiased_ece,
)
from tokcal.core.smooth_ece import SmoothCurve, smooth_curve, smooth_ece
from tokcal.errors import TokcalError

relplot = pytest.importorskip("relplot")

LABELS = ["Accept", "Reject"]


def draws(seed: int, n: int, shift: float, low: float = 0.5):
    """Confidences on [low, 1] and outcomes that are right with probability confidence - shift."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(low, 1, n)
    y = (rng.random(n) < np.clip(f - shift, 0, 1)).astype(float)
    return f, y


@pytest.mark.parametrize("n", [5, 60, 400, 3000])
@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3])
def test_smooth_ece_matches_relplot(n, shift):
    f, y = draws(n + int(100 * shift), n, shift)
    ref, ref_width = relplot.smECE(f, y, return_width=True)
    got, width = smooth_ece(f, y, return_width=True)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(ref, abs=1e-6)
    assert width[0] == ref_width


def test_small_kernel_widths_use_a_finer_grid():
    """A well-calibrated large sample: the width falls below 0.01, where relplot's grid and
    mesh grow (20 / width points); the numbers still agree."""
    f, y = draws(7, 40_000, 0.0, low=0.0)
    ref, ref_width = relplot.smECE(f, y, return_width=True)
    got, width = smooth_ece(f, y, return_width=True)
    assert ref_width < 0.01
    assert got[0] == pytest.approx(ref, abs=1e-6) and width[0] == ref_width


def test_weighted_rows_are_resamples():
    """A row of counts gives relplot's smooth ECE of the resample it describes."""
    f, y = draws(3, 500, 0.05)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(f), size=(12, len(f)))
    counts = np.stack([np.bincount(i, minlength=len(f)) for i in idx])
    got = smooth_ece(f, y, counts)
    ref = [relplot.smECE(f[i], y[i]) for i in idx]
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_smooth_curve_matches_relplot_regression():
    from relplot.estimators import CenteredRegressor, KernelSmoother
    from relplot.kernels import ReflectedGaussianKernel

    f, y = draws(11, 800, 0.1)
    _, width = relplot.smECE(f, y, return_width=True)
    est = CenteredRegressor(KernelSmoother(ReflectedGaussianKernel(width))).fit(f.reshape(-1, 1), y)
    curve = smooth_curve(f, y, resamples=50)
    mu = est.predict(curve.mesh.reshape(-1, 1))
    inside = (curve.mesh >= f.min()) & (curve.mesh <= f.max())
    assert curve.width == width
    np.testing.assert_allclose(curve.mean[inside], mu[inside], atol=1e-6)
    assert np.isnan(curve.mean[~inside]).all()  # no extrapolation below the smallest confidence
    assert np.all(curve.lower[inside] <= curve.mean[inside] + 1e-12)
    assert np.all(curve.mean[inside] <= curve.upper[inside] + 1e-12)
    # the band: percentiles over the same resamples, computed one by one with relplot's smoother
    rng = np.random.default_rng(0)
    per = []
    for _ in range(50):
        i = rng.integers(0, len(f), len(f))
        e = CenteredRegressor(KernelSmoother(ReflectedGaussianKernel(width))).fit(f[i].reshape(-1, 1), y[i])
        per.append(e.predict(curve.mesh.reshape(-1, 1)))
    np.testing.assert_allclose(curve.lower[inside], np.percentile(per, 2.5, axis=0)[inside], atol=1e-6)
    np.testing.assert_allclose(curve.upper[inside], np.percentile(per, 97.5, axis=0)[inside], atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_compute_metrics_scalars_match_the_packages(k):
    from calibration import utils as cu
    from model_diagnostics.scoring import SquaredError, decompose

    rng = np.random.default_rng(k)
    n = 700
    p = rng.dirichlet(np.ones(k) * 0.6, n) * rng.uniform(0.5, 1, (n, 1))
    q = p / p.sum(axis=1, keepdims=True)
    gt = np.array([rng.choice(k, p=row ** 1.5 / np.sum(row ** 1.5)) for row in q])
    m = compute_metrics(p, gt, LABELS if k == 2 else ["a", "b", "c"])
    s = m.scalars
    conf, correct = q.max(axis=1), (q.argmax(axis=1) == gt).astype(int)
    assert s["eval_decision_smece"] == pytest.approx(relplot.smECE(conf, correct.astype(float)), abs=1e-6)
    ref = cu.lower_bound_scaling_ce(conf, correct, p=2, debias=True, num_bins=15, binning_scheme=cu.get_equal_bins)
    assert s["eval_decision_ece_debiased"] == pytest.approx(ref, abs=1e-9)
    events = [0] if k == 2 else range(k)
    parts = np.zeros(3)
    for j in events:
        d = decompose((gt == j).astype(float), q[:, j], scoring_function=SquaredError())
        parts += [d["miscalibration"][0], d["discrimination"][0], d["uncertainty"][0]]
    got = [s[f"eval_decision_brier_{x}"] for x in ("calibration", "discrimination", "uncertainty")]
    np.testing.assert_allclose(got, parts, atol=1e-9)
    assert got[0] - got[1] + got[2] == pytest.approx(s["eval_decision_brier"], abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 9, 16, 1000])
def test_debiased_ece_small_bins_and_ties(n):
    """Fewer decisions than bins, bins of one, many tied confidences: as the package."""
    from calibration import utils as cu

    rng = np.random.default_rng(n)
    f = np.round(rng.uniform(0.5, 1, n), 1)  # heavy ties
    y = (rng.random(n) < f).astype(int)
    ref = cu.lower_bound_scaling_ce(f, y, p=2, debias=True, num_bins=15, binning_scheme=cu.get_equal_bins)
    assert debiased_ece(f, y) == pytest.approx(ref, abs=1e-12)


def test_brier_decomposition_with_ties_against_model_diagnostics():
    from model_diagnostics.scoring import SquaredError, decompose

    rng = np.random.default_rng(5)
    x = np.round(rng.uniform(0, 1, 3000), 2)
    y = (rng.random(3000) < x ** 2).astype(float)
    d = decompose(y, x, scoring_function=SquaredError())
    np.testing.assert_allclose(brier_decomposition(x, y),
                               [d["miscalibration"][0], d["discrimination"][0], d["uncertainty"][0]], atol=1e-12)


def test_smooth_curve_round_trip_and_figure():
    """The curve survives the stored JSON (NaN outside the data as null) and the reliability
    diagram draws it; a reused figure drops the band when the next evaluation has none."""
    from tokcal.core.plots import metric_figures

    rng = np.random.default_rng(1)
    p = rng.dirichlet([0.5, 0.5], 300)
    gt = (rng.random(300) < 0.5).astype(int)
    m = compute_metrics(p, gt, LABELS)
    back = DecisionMetrics.from_dict(json.loads(json.dumps(m.to_dict(), allow_nan=False)))
    np.testing.assert_allclose(back.smooth_reliability.mean, m.smooth_reliability.mean, atol=1e-6, equal_nan=True)
    fig = metric_figures(back, step=1)["reliability"]
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("smoothed"))
    np.testing.assert_allclose(line.get_xdata(), back.smooth_reliability.mesh)
    assert len(fig.axes[0].collections) == 1  # the band
    back.smooth_reliability = None
    fig = metric_figures(back, step=2)["reliability"]
    assert len(fig.axes[0].collections) == 0 and len(line.get_xdata()) == 0


def test_bad_input():
    with pytest.raises(TokcalError, match=r"expected confidences in \[0, 1\]"):
        smooth_ece(np.array([0.5, 1.2]), np.array([1, 0]))
    with pytest.raises(TokcalError, match="expected confidence and outcome of one non-zero length"):
        smooth_ece(np.array([]), np.array([]))
    with pytest.raises(TokcalError, match=r"expected weights of shape \(B, 2\)"):
        smooth_ece(np.array([0.5, 0.7]), np.array([1, 0]), np.ones((3, 4)))
    assert isinstance(SmoothCurve.from_dict(smooth_curve(np.array([0.6, 0.9]), np.array([1, 1]),
                                                         resamples=3).to_dict()), SmoothCurve)
