"""tokcal.core.plots: figures of sane shape, bars that show the numbers, no pyplot state."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tokcal.core.metrics import Histogram, compute_metrics, reliability_bins
from tokcal.core.plots import (
    figure_to_array,
    figure_to_png,
    histogram_figure,
    metric_figures,
    reliability_diagram,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bars(ax):
    """The bars that are drawn (a reused figure hides the gap bar of an empty bin)."""
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_visible()]


def _metrics(k=2, n=300, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0.5, 1.0, size=(n, 1))
    gt = rng.integers(0, k, size=n)
    labels = ["Accept", "Reject"] if k == 2 else ["A", "B", "C", "D"][:k]
    return compute_metrics(p, gt, labels)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before == []


def test_reliability_diagram_bars_show_the_bins():
    conf = np.array([0.05, 0.15, 0.18, 0.95, 0.99, 0.55])
    out = np.array([0, 1, 0, 1, 1, 0])
    b = reliability_bins(conf, out, 10)
    fig = reliability_diagram(b, ece=0.1234, title="T")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    top, bottom = fig.axes
    full = b.counts > 0
    # Top: one accuracy bar per bin (0 where empty) then one gap bar per non-empty bin.
    bars = _bars(top)
    assert len(bars) == 10 + full.sum()
    np.testing.assert_allclose([r.get_height() for r in bars[:10]], np.where(full, b.accuracy, 0.0))
    np.testing.assert_allclose([r.get_x() for r in bars[:10]], np.arange(10) / 10, atol=1e-12)
    gaps = bars[10:]
    np.testing.assert_allclose([r.get_y() + r.get_height() for r in gaps], b.confidence[full])
    # Bottom: the counts.
    assert [r.get_height() for r in _bars(bottom)] == b.counts.tolist()
    assert fig.get_suptitle() == "T (ECE = 0.1234)"  # the figure's title, above the legend
    assert top.get_xlim() == (0.0, 1.0) and top.get_ylim() == (0.0, 1.0)


@pytest.mark.parametrize("ece", [None, float("nan")])
def test_reliability_diagram_without_ece_and_with_empty_bins(ece):
    b = reliability_bins(np.array([], dtype=float), np.array([], dtype=float), 5)
    fig = reliability_diagram(b, ece=ece)
    assert fig.get_suptitle() == "Reliability"
    assert figure_to_array(fig).shape == (640, 500, 3)


def test_histogram_figure_panels_and_counts():
    edges = np.arange(11) / 10
    hists = {"p_accept": Histogram(edges, np.arange(10)), "mass": Histogram(edges, np.ones(10, dtype=int) * 3)}
    fig = histogram_figure(hists, title="H")
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["p_accept", "mass"]
    assert [r.get_height() for r in _bars(fig.axes[0])] == list(range(10))
    assert [r.get_height() for r in _bars(fig.axes[1])] == [3] * 10
    h, w, c = figure_to_array(fig).shape
    assert (h, w, c) == (300, 640, 3)
    assert len(histogram_figure({}).axes) == 1  # nothing to draw, still a figure


def test_metric_figures_binary_multiclass_and_empty():
    figs = metric_figures(_metrics(2), step=7)
    assert set(figs) == {"reliability", "reliability_positive", "histograms"}
    assert figs["reliability"].get_suptitle().startswith("Reliability @ step 7 (ECE = ")
    assert figs["reliability_positive"].get_suptitle() == "P(Accept) calibration @ step 7"
    assert len(figs["histograms"].axes) == 4  # p_accept, p_reject, mass, confidence

    figs4 = metric_figures(_metrics(4))
    assert set(figs4) == {"reliability", "histograms"}
    assert len(figs4["histograms"].axes) == 6
    assert "@ step" not in figs4["reliability"].get_suptitle()

    empty = compute_metrics(np.empty((0, 2)), np.empty(0, dtype=int), ["Accept", "Reject"])
    assert metric_figures(empty) == {}


def test_figure_to_png_and_array():
    fig = metric_figures(_metrics(2))["reliability"]
    png = figure_to_png(fig)
    assert png.startswith(PNG_MAGIC)
    w, h = _png_size(png)
    assert (w, h) == (500, 640)  # 5 x 6.4 inches at 100 dpi
    arr = figure_to_array(fig)
    assert arr.dtype == np.uint8 and arr.shape == (h, w, 3) and arr.flags.c_contiguous
    assert arr.min() < 100 and arr.max() == 255  # something was drawn on a white page


def test_plots_do_not_use_pyplot():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from tokcal.core.metrics import compute_metrics
        from tokcal.core.plots import figure_to_array, figure_to_png, metric_figures
        m = compute_metrics(np.array([[0.7, 0.2], [0.4, 0.5], [0.1, 0.8]]), np.array([0, 0, 1]), ["Accept", "Reject"])
        figs = metric_figures(m)
        assert set(figs) == {"reliability", "reliability_positive", "histograms"}
        assert figure_to_png(figs["reliability"]).startswith(b"\\x89PNG")
        figure_to_array(figs["histograms"])
        assert "matplotlib.pyplot" not in sys.modules, "tokcal.core.plots imported pyplot"
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def _pixels(fig) -> np.ndarray:
    return figure_to_array(fig)


def _binary_metrics(p_pos: np.ndarray, gt: np.ndarray):
    p = np.stack([p_pos, 1 - p_pos], axis=1) * 0.9
    return compute_metrics(p, gt, ["Accept", "Reject"])


def test_reused_figures_draw_what_fresh_figures_draw():
    """metric_figures reuses one figure per kind: after evaluations with full bins, one
    whose bins are mostly empty (and taller counts, another ECE) looks exactly like the
    same evaluation drawn on new figures."""
    rng = np.random.default_rng(3)
    first = _metrics(2, n=2000, seed=1)
    sparse = _binary_metrics(np.r_[rng.uniform(0.9, 1.0, 5000), rng.uniform(0.0, 0.05, 30)],
                             rng.integers(0, 2, 5030))
    for m in (first, sparse):
        reused = metric_figures(m, step=5)
    assert metric_figures(sparse, step=5)["reliability"] is reused["reliability"]  # the same figure again
    fresh = {
        "reliability": reliability_diagram(sparse.reliability, ece=sparse.scalars["eval_decision_ece"],
                                           title="Reliability @ step 5", smooth=sparse.smooth_reliability),
        "reliability_positive": reliability_diagram(sparse.positive_reliability,
                                                    title="P(Accept) calibration @ step 5",
                                                    positive="Accept"),
        "histograms": histogram_figure(sparse.histograms, title="Decision histograms @ step 5"),
    }
    for name, fig in fresh.items():
        np.testing.assert_array_equal(_pixels(reused[name]), _pixels(fig), err_msg=name)
    # Empty bins draw no gap bar, full ones one each.
    full = sparse.reliability.counts > 0
    assert len(_bars(reused["reliability"].axes[0])) == len(full) + full.sum()


def test_a_new_label_set_gets_its_own_figure():
    figs2 = metric_figures(_metrics(2))
    n2 = len(figs2["histograms"].axes)
    figs4 = metric_figures(_metrics(4))
    assert len(figs4["histograms"].axes) == 6 and figs4["histograms"] is not figs2["histograms"]
    assert len(metric_figures(_metrics(2))["histograms"].axes) == n2 == 4


def test_each_thread_draws_on_its_own_figures():
    """The callback draws in a background thread while W&B draws in the training thread:
    two threads drawing different evaluations at once each get their own numbers."""
    ms = [_metrics(2, n=500, seed=s) for s in (10, 11)]
    expected = [_pixels(reliability_diagram(m.reliability, ece=m.scalars["eval_decision_ece"], title="Reliability",
                                            smooth=m.smooth_reliability))
                for m in ms]
    got: dict[int, list] = {0: [], 1: []}
    start = threading.Barrier(2)

    def work(i: int) -> None:
        start.wait()
        for _ in range(4):
            got[i].append(_pixels(metric_figures(ms[i])["reliability"]))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(got[i]) == 4
        for arr in got[i]:
            np.testing.assert_array_equal(arr, expected[i])
