"""Labels with TeX between ``$...$`` that matplotlib cannot parse: drawn as plain text, so
the figures are still made, logged and reported (before, every figure failed)."""

from __future__ import annotations

import numpy as np
import pytest

from tokcal.core.metrics import compute_metrics
from tokcal.core.plots import figure_to_png, metric_figures

BAD_TEX = [r"$\frac{$", r"$x^$"]  # mathtext fails on both


def _metrics(seed: int, labels=BAD_TEX):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(2), size=30) * 0.9
    return compute_metrics(p, rng.integers(0, 2, 30), labels)


def test_matplotlib_really_cannot_parse_these():
    from matplotlib.figure import Figure

    for label in BAD_TEX:
        fig = Figure()
        fig.suptitle(label)
        with pytest.raises(ValueError):
            figure_to_png(fig)


def test_figures_draw_the_labels_as_written():
    figs = metric_figures(_metrics(0), step=3)
    assert sorted(figs) == ["histograms", "reliability", "reliability_positive"]
    for fig in figs.values():
        assert figure_to_png(fig).startswith(b"\x89PNG")
    texts = [t.get_text() for t in figs["reliability_positive"].findobj(lambda a: hasattr(a, "get_text"))]
    assert rf"P({BAD_TEX[0]}) calibration @ step 3" in texts
    assert any(t.startswith(rf"mean q({BAD_TEX[0]})") for t in texts)  # the x axis, label as written


def test_tracker_logs_the_figures_and_report_draws_them(tmp_path, capsys):
    from tokcal.cli.main import main
    from tokcal.trackers import open_tracker

    with open_tracker("local", local_dir=tmp_path / "store") as run:
        for step in (5, 10):
            run.log_evaluation(_metrics(step), step)
    pngs = sorted(p.name for p in (tmp_path / "store").rglob("*.png"))
    assert len(pngs) == 6, pngs  # three figures per evaluation
    assert main(["report", str(tmp_path / "store"), "-o", str(tmp_path / "r.html"), "-q"]) == 0, capsys.readouterr()
    files = tmp_path / "r_files"
    assert (files / "evolution.png").is_file()
    assert len(list(files.rglob("step_*_reliability_positive.png"))) == 2
    html = (tmp_path / "r.html").read_text()
    assert f"<th>P({BAD_TEX[0]})</th>" in html
