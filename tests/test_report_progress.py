"""``tokcal report`` over many evaluations: a progress bar on stderr (none with --quiet), and
per-step figures drawn on reused figures that show each step's own numbers (pixel for pixel
what a new figure of that step shows)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tokcal.demo.simulated import simulate_run
from tokcal.cli.main import main
from tokcal.trackers import open_tracker

STEPS = [10, 20, 30, 40]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-progress")
    with open_tracker("local", local_dir=root / "store") as run:
        simulate_run(run, seed=4, steps=STEPS, n=40, text=False)
    return root / "store"


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_progress_on_stderr_and_quiet(store, tmp_path, capsys):
    assert main(["report", str(store), "-o", str(tmp_path / "a" / "r.html")]) == 0
    err = capsys.readouterr().err
    assert "report" in err and f"{len(STEPS)}/{len(STEPS)}" in err, err
    assert main(["report", str(store), "-o", str(tmp_path / "b" / "r.html"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "report:" in captured.out


def test_each_step_figure_equals_a_new_figure_of_that_step(store, tmp_path, capsys):
    from tokcal.core.plots import figure_to_png, reliability_diagram
    from tokcal.jobs.report import read_sources
    from tokcal.jobs.report_html import STEP_DPI

    assert main(["report", str(store), "-o", str(tmp_path / "r.html"), "-q"]) == 0
    (series,) = read_sources([str(store)])
    files = sorted((tmp_path / "r_files").rglob("step_*_reliability.png"))
    assert len(files) == len(STEPS)
    for f, p in zip(files, series.points):
        fresh = reliability_diagram(p.metrics.reliability, ece=p.scalar("decision_ece"),
                                    title=f"Reliability @ step {p.step}", smooth=p.metrics.smooth_reliability)
        assert np.array_equal(_pixels(f.read_bytes()), _pixels(figure_to_png(fresh, STEP_DPI))), f.name
    shown = [_pixels(f.read_bytes()) for f in files]
    assert not np.array_equal(shown[0], shown[-1])  # each step shows its own numbers
    for kind in ("reliability_positive", "histograms"):
        assert len(list((tmp_path / "r_files").rglob(f"step_*_{kind}.png"))) == len(STEPS)
