"""Smooth ECE and the smoothed reliability curve (Błasiok and Nakkiran, ICLR 2024).

Binned ECE changes with the number of bins and jumps when one decision crosses a bin
edge. The smooth ECE replaces the bins by a Gaussian kernel (reflected at 0 and 1) whose
width is chosen from the data, and reads the calibration error off the smoothed gap
between confidence and outcome. This module computes exactly what the authors' package
``relplot`` computes (``relplot.smECE`` and the curve of ``relplot.prepare_rel_diagram``,
the tests check both to 1e-6), but for many weightings of one sample at once: a bootstrap
resample is a row of counts, each row is spread onto the grid and Fourier-transformed
once, and each bisection step is one product and one inverse transform per row.

The steps, as in ``relplot``: the residuals ``confidence - outcome`` (and ones, for the
density) are spread linearly onto a grid of ``max(2000, 20 / sigma) // 2 + 1`` points,
convolved with the kernel reflected at both ends, interpolated onto a mesh of
``max(200, 10 / sigma)`` points; the smooth ECE at width ``sigma`` is the density-weighted
mean of the absolute smoothed residual; the width is found by bisection (10 halvings) as
the point where it equals the smooth ECE at that width.

Example:
    >>> import numpy as np
    >>> conf = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.85])
    >>> correct = np.array([1, 1, 0, 1, 1, 0])
    >>> round(float(smooth_ece(conf, correct)[0]), 4)
    0.1454
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokcal.errors import TokcalError

MIN_WIDTH = 0.001  # relplot's eps: widths below this are accepted without checking
REFINE = 10  # bisection steps for the width
MESH = 200  # relplot's mesh (config.smECE_mesh_pts, config.plot_mesh_pts)
DENSITY_EPS = 1e-4  # added to the smoothed density before dividing by it (relplot's)


def _grid_size(sigma: float) -> int:
    return max(2000, round(20 / sigma)) // 2 + 1


def _mesh_size(sigma: float) -> int:
    return max(round(10 / sigma), MESH)


def _kernel(g: int, sigma: float) -> np.ndarray:
    t = np.linspace(0, 1, g)
    res = np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma ** 2))
    return res / (np.sqrt(2 * np.pi) * sigma)


def _interpolation(g: int, mesh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid index and weight of the right neighbour for each mesh point (relplot's ``interpolate``)."""
    inds = (mesh * (g - 1)).astype(int).clip(0, g - 2)
    size = 1 / (g - 1)
    return inds, (mesh - inds * size) / size


@functools.lru_cache(maxsize=64)
def _kernel_fft(g: int, sigma: float, length: int) -> np.ndarray:
    return np.fft.rfft(_kernel(g, sigma), length)


class _Grids:
    """Per grid size, the spread of the residuals and of the weights onto the grid (relplot's
    ``smooth_round_to_grid``), reflected at both ends and Fourier-transformed once; smoothing
    at any width is then one product and one inverse transform per row."""

    def __init__(self, f: np.ndarray, r: np.ndarray, weights: np.ndarray) -> None:
        self.f, self.r, self.w = f, r, weights
        self._cache: dict[int, tuple[int, np.ndarray]] = {}

    def spectra(self, g: int) -> tuple[int, np.ndarray]:
        """FFT length and the (2B, length // 2 + 1) spectra: B residual rows, then B weight rows."""
        if g not in self._cache:
            from scipy.fft import next_fast_len
            from scipy.sparse import csr_matrix

            n = len(self.f)
            bins = (self.f * (g - 1)).astype(int).clip(0, g - 2)
            frac = self.f * (g - 1) - bins
            spread = csr_matrix((np.r_[1 - frac, frac], (np.r_[np.arange(n), np.arange(n)], np.r_[bins, bins + 1])),
                                shape=(n, g))
            values = np.asarray((spread.T @ np.vstack([self.w * self.r, self.w]).T).T)
            # relplot's ReflectedGaussianKernel: [v reversed without its last, v, v reversed without its first]
            ext = np.concatenate([values[:, ::-1][:, :-1], values, values[:, ::-1][:, 1:]], axis=1)
            # relplot keeps np.convolve(ext, kernel, "valid")[g // 2: g // 2 + g], which reads only
            # ext[g // 2: g // 2 + 2g - 1]; a circular convolution of that stretch of length >= 2g - 1
            # leaves its outputs g - 1 .. 2g - 2 (the ones kept) free of wrap-around
            seg = ext[:, g // 2: g // 2 + 2 * g - 1]
            length = next_fast_len(2 * g - 1, real=True)
            self._cache[g] = (length, np.fft.rfft(seg, length, axis=1))
        return self._cache[g]


def _smoothed(grids: _Grids, rows: np.ndarray, sigma: float, n_mesh: int) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed residual and density of the weight rows ``rows`` on the mesh (relplot's
    ``BaseKernelMixin.smooth`` before the division): (len(rows), n_mesh) each."""
    g = _grid_size(sigma)
    length, spec = grids.spectra(g)
    b = len(grids.w)
    picked = spec[np.r_[rows, rows + b]]
    full = np.fft.irfft(picked * _kernel_fft(g, sigma, length)[None, :], length, axis=1)
    sm = full[:, g - 1: 2 * g - 1]  # the kept outputs (see _Grids.spectra)
    inds, frac = _interpolation(g, np.linspace(0, 1, n_mesh))
    on_mesh = sm[:, inds] * (1 - frac) + sm[:, inds + 1] * frac
    return on_mesh[: len(rows)], on_mesh[len(rows):]


def _at_width(grids: _Grids, rows: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth ECE at kernel width ``sigma`` for the weight rows ``rows``."""
    ys, density = _smoothed(grids, rows, sigma, _mesh_size(sigma))
    density = density + DENSITY_EPS
    return np.sum(np.abs(ys / density) * density, axis=1) / np.sum(density, axis=1)


def _check(confidence: Any, outcome: Any, weights: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(outcome, dtype=np.float64).reshape(-1)
    if f.shape != y.shape or not len(f):
        raise TokcalError(f"expected confidence and outcome of one non-zero length, got {f.shape} and {y.shape}")
    if not np.all((f >= 0) & (f <= 1)):
        raise TokcalError(f"expected confidences in [0, 1], got values from {f.min()!r} to {f.max()!r}")
    w = np.ones((1, len(f))) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != len(f):
        raise TokcalError(f"expected weights of shape (B, {len(f)}), got {w.shape}")
    return f, y, w


def smooth_ece(confidence: Any, outcome: Any, weights: Any = None, *, return_width: bool = False) -> Any:
    """Smooth ECE of ``confidence`` against ``outcome`` (1 right, 0 wrong), one per row of ``weights``.

    Args:
        confidence: (N,) predicted probability of the event (the top label's, for top-label calibration).
        outcome: (N,) 1 where the event happened, else 0.
        weights: (B, N) how often each decision counts in each of B weightings (a bootstrap
            resample is a row of counts); default one row of ones, the sample itself.
        return_width: also return each row's kernel width.

    Returns:
        (B,) smooth ECE (and (B,) widths): ``relplot.smECE(f[idx], y[idx])`` for the resample
        ``idx`` that a row of counts describes.
    """
    f, y, w = _check(confidence, outcome, weights)
    grids = _Grids(f, f - y, w)
    b = len(w)
    # relplot first tries width 1, accepted when 1 < smooth ECE(1): never, since the density-weighted
    # mean of |smoothed residual| / (density + 1e-4) stays below 1. So the bisection starts at once.
    start, end = np.ones(b), np.zeros(b)
    value_at_start = np.full(b, np.nan)
    for _ in range(REFINE):
        mid = (start + end) / 2
        ok = mid < MIN_WIDTH
        for sigma in np.unique(mid[~ok]):
            rows = np.flatnonzero((mid == sigma) & ~ok)
            val = _at_width(grids, rows, float(sigma))
            below = sigma < val
            ok[rows[below]] = True
            value_at_start[rows[~below]] = val[~below]
        end = np.where(ok, mid, end)
        start = np.where(ok, start, mid)
    for sigma in np.unique(start[np.isnan(value_at_start)]):
        rows = np.flatnonzero((start == sigma) & np.isnan(value_at_start))
        value_at_start[rows] = _at_width(grids, rows, float(sigma))
    return (value_at_start, start) if return_width else value_at_start


@dataclass
class SmoothCurve:
    """The smoothed reliability curve: E[outcome | confidence] on ``mesh``, with a band.

    Attributes:
        mesh: (M,) confidences on [0, 1].
        mean: (M,) the kernel-smoothed outcome at each mesh point (relplot's main line,
            fitted on the whole sample); NaN outside the range of the confidences, where
            the curve would only extrapolate.
        lower, upper: (M,) the band: percentiles of the same curve over bootstrap resamples.
        width: the kernel width (the smooth ECE's).
        level: the band's coverage (0.95).
    """

    mesh: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    width: float
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {"mesh": _floats(self.mesh), "mean": _floats(self.mean), "lower": _floats(self.lower),
                "upper": _floats(self.upper), "width": float(self.width), "level": float(self.level)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SmoothCurve:
        return cls(*(np.array([np.nan if x is None else x for x in d[k]], dtype=float)
                     for k in ("mesh", "mean", "lower", "upper")),
                   width=float(d["width"]), level=float(d.get("level", 0.95)))


def _floats(a: np.ndarray) -> list[float | None]:
    return [round(float(x), 6) if math.isfinite(x) else None for x in a]


BAND_RESAMPLES = 100


def smooth_curve(confidence: Any, outcome: Any, *, width: float | None = None, resamples: int = BAND_RESAMPLES,
                 level: float = 0.95, seed: int = 0, n_mesh: int = MESH) -> SmoothCurve:
    """The smoothed reliability curve of ``relplot.prepare_rel_diagram`` (the regression of
    outcome on confidence with the smooth ECE's kernel), and a band from ``resamples``
    seeded bootstrap resamples of the decisions at the same width.

    Example:
        >>> c = smooth_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 1]), resamples=20)
        >>> len(c.mesh), bool(np.nanmin(c.upper - c.lower) >= 0)
        (200, True)
    """
    f, y, _ = _check(confidence, outcome, None)
    if width is None:
        width = float(smooth_ece(f, y, return_width=True)[1][0])
    n = len(f)
    rng = np.random.default_rng(seed)
    counts = np.vstack([np.ones(n)] + [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    grids = _Grids(f, y - f, counts)
    ys, density = _smoothed(grids, np.arange(len(counts)), width, n_mesh)
    mesh = np.linspace(0, 1, n_mesh)
    curves = ys / (density + DENSITY_EPS) + mesh
    if resamples:
        lower, upper = np.percentile(curves[1:], [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    else:
        lower = upper = curves[0]
    outside = (mesh < f.min()) | (mesh > f.max())
    mean, lower, upper = (np.where(outside, np.nan, c) for c in (curves[0], lower, upper))
    return SmoothCurve(mesh, mean, lower, upper, width, level)


__all__ = ["BAND_RESAMPLES", "SmoothCurve", "smooth_curve", "smooth_ece"]
