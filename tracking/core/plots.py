"""Figures from computed metrics (matplotlib, Agg, no pyplot state)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from tracking.core.metrics import DecisionMetrics, Histogram, ReliabilityBins


def reliability_diagram(
    bins: ReliabilityBins, *, ece: float | None = None, title: str = "Reliability", xlabel: str = "confidence"
) -> Figure:
    """Accuracy per bin against the diagonal, the gap shaded, counts underneath.

    Example:
        >>> from tracking.core.metrics import reliability_bins
        >>> fig = reliability_diagram(reliability_bins(np.array([0.8, 0.6]), np.array([1, 0]), 10))
        >>> len(fig.axes)
        2
    """
    fig = Figure(figsize=(5.0, 6.0), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = bins.edges
    width = np.diff(edges)
    left = edges[:-1]
    full = bins.counts > 0
    acc = np.where(full, bins.accuracy, 0.0)
    conf = np.where(full, bins.confidence, 0.0)
    top.bar(left, acc, width=width, align="edge", color="#4C72B0", edgecolor="white", label="accuracy")
    top.bar(left[full], (conf - acc)[full], bottom=acc[full], width=width[full], align="edge",
            facecolor="none", edgecolor="#C44E52", hatch="//", linewidth=1.0, label="gap to confidence")
    top.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    full_title = title if ece is None or np.isnan(ece) else f"{title} (ECE = {ece:.4f})"
    top.set_title(full_title)
    bottom.bar(left, bins.counts, width=width, align="edge", color="#55A868", edgecolor="white")
    bottom.set_ylabel("count")
    bottom.set_xlabel(xlabel)
    # Fixed margins: tight_layout would draw the whole figure once more to measure it.
    fig.subplots_adjust(left=0.13, right=0.97, top=0.94, bottom=0.08, hspace=0.08)
    return fig


def histogram_figure(histograms: dict[str, Histogram], *, title: str = "Decision histograms") -> Figure:
    """One panel per histogram (p of each label, mass, confidence) on shared [0, 1] edges."""
    names = list(histograms)
    n = max(len(names), 1)
    fig = Figure(figsize=(3.2 * n, 3.0), dpi=100)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, name in zip(axes, names):
        h = histograms[name]
        ax.bar(h.edges[:-1], h.counts, width=np.diff(h.edges), align="edge", color="#4C72B0", edgecolor="white")
        ax.set_xlim(0, 1)
        ax.set_title(name)
        ax.set_xlabel("probability")
    axes[0].set_ylabel("count")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.8 / (3.2 * n), right=1 - 0.3 / (3.2 * n), top=0.80, bottom=0.17,
                        wspace=0.3)
    return fig


def metric_figures(metrics: DecisionMetrics, *, step: int | None = None) -> dict[str, Figure]:
    """The standard figures of one evaluation, keyed by a short name."""
    where = "" if step is None else f" @ step {step}"
    figs: dict[str, Figure] = {}
    if metrics.reliability is not None:
        ece = metrics.scalars.get(f"{metrics.prefix}decision_ece")
        figs["reliability"] = reliability_diagram(metrics.reliability, ece=ece, title=f"Reliability{where}")
    if metrics.positive_reliability is not None:
        figs["reliability_positive"] = reliability_diagram(
            metrics.positive_reliability,
            title=f"P({metrics.labels[0]}) calibration{where}",
            xlabel=f"mean q({metrics.labels[0]})",
        )
    if metrics.histograms:
        figs["histograms"] = histogram_figure(metrics.histograms, title=f"Decision histograms{where}")
    return figs


def figure_to_png(fig: Figure) -> bytes:
    """Render to PNG bytes (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render to an (H, W, 3) uint8 array, what ``mlflow.log_image`` accepts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
