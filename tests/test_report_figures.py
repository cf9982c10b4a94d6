"""The report's words and figures: one name per meaning of "confidence", the P(label)
calibration plot's words, faint low-count bins, legends that cover no data, titles inside
the PNG, the comparison's reliability zoomed to its data, and one name per sample across
live and backfilled records. Figures are rendered (Agg) and measured, not inspected as code."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tokcal.core.metrics import compute_metrics, reliability_bins
from tokcal.core.per_sample import PerSample
from tokcal.core.plots import MIN_BIN_COUNT, figure_to_png, metric_figures, reliability_diagram
from tokcal.jobs.report_analysis import (
    comparison_figure,
    data_range,
    flips_figure,
    heatmap_figure,
    risk_coverage_figure,
    share_ids,
)
from tokcal.jobs.report_html import evolution_figure, write_report
from tokcal.trackers.base import Point, Series

LABELS = ["Accept", "Reject"]
LONG = "mlflow a-rather-long-run-name-from-a-sweep-lr3e-5-bs16-seed1 · eval_holdout_second_set"


def metrics_at(seed: int, n: int = 120, lo: float = 0.55, step_prefix: str = "eval_", data: int = 0):
    """One evaluation of eval set ``data`` (its true labels) by a model drawn from ``seed``."""
    gt = np.random.default_rng(1000 + data).integers(0, 2, n)
    rng = np.random.default_rng(seed)
    p_true = rng.uniform(lo, 0.99, n)
    wrong = rng.random(n) < 0.1
    p_true[wrong] = 1 - p_true[wrong]
    probs = np.zeros((n, 2))
    probs[np.arange(n), gt] = p_true * 0.97
    probs[np.arange(n), 1 - gt] = (1 - p_true) * 0.97
    return compute_metrics(probs, gt, LABELS, prefix=step_prefix), PerSample(LABELS, np.arange(n), gt, probs)


def series_of(name: str, seeds=(1, 2, 3), ids: bool = False, data: int = 0) -> Series:
    points = []
    for step, seed in zip((10, 20, 30), seeds):
        m, rec = metrics_at(seed, data=data)
        if ids:
            rec = PerSample(LABELS, rec.index, rec.gt, rec.probs, ids=[f"rec-{i}" for i in rec.index])
        points.append(Point(step, m, False, rec))
    return Series(name, points, "test")


def rendered(fig):
    figure_to_png(fig)  # draws it
    return fig.canvas.get_renderer()


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_words_of_the_two_reliability_diagrams():
    m, _ = metrics_at(0)
    figs = metric_figures(m, step=5)
    top = figs["reliability"]
    assert top.axes[0].get_ylabel() == "accuracy"
    assert top.axes[1].get_xlabel() == "normalised confidence q of the predicted label"
    assert [t.get_text() for t in top.legends[0].get_texts()][:2] == ["accuracy", "gap to normalised confidence"]
    pos = figs["reliability_positive"]
    assert pos.axes[0].get_ylabel() == "fraction truly Accept"
    assert "mean q(Accept)" in pos.axes[1].get_xlabel()
    texts = [t.get_text() for t in pos.legends[0].get_texts()]
    assert texts[:2] == ["fraction truly Accept", "gap to mean q(Accept)"]
    assert not any("accuracy" in t or "gap to confidence" in t for t in texts)
    # The reused figure draws the top-label words again afterwards.
    again = metric_figures(m, step=6)["reliability"]
    assert again.axes[0].get_ylabel() == "accuracy"


def test_bins_with_few_decisions_are_faint():
    rng = np.random.default_rng(4)
    conf = np.r_[rng.uniform(0.9, 1.0, 400), [0.55, 0.56], rng.uniform(0.7, 0.72, 3)]
    correct = np.r_[rng.random(400) < 0.9, [1, 1], [1, 0, 1]].astype(float)
    bins = reliability_bins(conf, correct, 15)
    fig = reliability_diagram(bins)
    bars = fig.axes[0].patches[: len(bins.counts)]
    for bar, count in zip(bars, bins.counts):  # one accuracy bar per bin, in bin order
        assert bar.get_alpha() == (0.25 if count < MIN_BIN_COUNT else 1.0), count
    assert sum(1 for c in bins.counts if 0 < c < MIN_BIN_COUNT) == 2  # the bins of 2 and 3 decisions
    assert f"< {MIN_BIN_COUNT} decisions" in fig.legends[0].get_texts()[3].get_text()


@pytest.mark.parametrize("which", ["reliability", "evolution", "comparison", "flips", "risk_coverage"])
def test_legends_cover_no_axes_and_titles_stay_inside(which):
    s1, s2 = series_of(LONG), series_of("local run2 · eval", seeds=(4, 5, 6))
    records = [(p.step, p.per_sample) for p in s1.points]
    fig = {
        "reliability": lambda: metric_figures(s1.points[0].metrics, step=10)["reliability"],
        "evolution": lambda: evolution_figure([s1, s2]),
        "comparison": lambda: comparison_figure([(s1, s1.points[-1]), (s2, s2.points[-1])]),
        "flips": lambda: flips_figure(records, LONG),
        "risk_coverage": lambda: risk_coverage_figure(s1.points, s1.points[-1], LONG),
    }[which]()
    r = rendered(fig)
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, which
    page = fig.bbox
    for legend in legends:
        box = legend.get_window_extent(r)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 <= box.y0 and box.y1 <= page.y1 + 1
        for ax in fig.axes:
            assert not boxes_overlap(box, ax.get_window_extent(r)), (which, ax.get_title())
    for text in [ax.title for ax in fig.axes] + ([fig._suptitle] if fig._suptitle else []):
        if text.get_text():
            box = text.get_window_extent(r)
            assert page.x0 <= box.x0 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1, text.get_text()


def test_heatmap_title_with_a_long_name_stays_inside():
    s = series_of(LONG)
    fig = heatmap_figure([(p.step, p.per_sample) for p in s.points], LONG)
    r = rendered(fig)
    box, page = fig.axes[0].title.get_window_extent(r), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert LONG in fig.axes[0].get_title().replace("\n", " ")


def test_comparison_reliability_zooms_to_the_data_with_the_diagonal():
    s1, s2 = series_of("a"), series_of("b", seeds=(7, 8, 9))
    fig = comparison_figure([(s1, s1.points[-1]), (s2, s2.points[-1])])
    rel = fig.axes[0]
    conf = np.concatenate([np.asarray(s.points[-1].metrics.reliability.confidence) for s in (s1, s2)])
    acc = np.concatenate([np.asarray(s.points[-1].metrics.reliability.accuracy) for s in (s1, s2)])
    lo = min(np.nanmin(conf), np.nanmin(acc))
    x0, x1 = rel.get_xlim()
    assert x0 > 0.1 and x0 <= lo and x1 >= 1.0  # zoomed in, every bin inside
    assert rel.get_ylim() == rel.get_xlim()  # square: the diagonal keeps its meaning
    diagonal = rel.lines[0]
    assert diagonal.get_xdata().tolist() == [0, 1] and diagonal.get_ydata().tolist() == [0, 1]
    assert "normalised confidence q" in rel.get_xlabel()
    assert data_range([np.array([0.02, 0.98])]) == (0.0, 1.0)


def test_small_bins_far_off_do_not_undo_the_zoom():
    """As in the demo: every large bin above 0.8, one wrong decision alone in a bin at q 0.6
    (accuracy 0): the view stays on the large bins and the title counts those below it."""
    rng = np.random.default_rng(5)
    n = 200
    gt = rng.integers(0, 2, n)
    q = np.r_[rng.uniform(0.82, 0.98, n - 1), 0.61]
    pred = gt.copy()
    pred[-1] = 1 - gt[-1]
    pred[: 15] = 1 - gt[: 15]
    probs = np.zeros((n, 2))
    probs[np.arange(n), pred] = q
    probs[np.arange(n), 1 - pred] = 1 - q
    m = compute_metrics(probs, gt, LABELS)
    s = Series("demo · eval", [Point(10, m)], "test")
    rel = comparison_figure([(s, s.points[0]), (s, s.points[0])]).axes[0]
    assert rel.get_xlim()[0] >= 0.7
    assert "2 small bins below it" in rel.get_title().replace("\n", " ")  # one per series


def test_live_records_take_the_backfilled_ids_by_index(tmp_path):
    live = series_of("live · eval")  # the callback's records: no ids
    back = series_of("backfill · eval", ids=True)  # the same eval set, from its JSONL
    assert live.points[0].per_sample.sample_name(3) == "#3"
    shared = share_ids([live, back])
    for p in shared[0].points:
        assert [p.per_sample.sample_name(i) for i in range(len(p.per_sample))] == \
               [f"rec-{i}" for i in p.per_sample.index]
    assert live.points[0].per_sample.ids is None  # the given series are not changed

    out = write_report([live, back], tmp_path / "r.html", step_figures=False)
    text = out.read_text(encoding="utf-8")
    section = text.split('id="per-sample-live-eval"')[1].split("</table>")[0]
    names = re.findall(r"<tr><td>\d+</td><td>([^<]*)</td>", section)
    assert names and all(n.startswith("rec-") for n in names)
    assert "normalised confidence q</th>" in section

    # Not shared: another eval set under the prefix (true labels differ), or two records
    # with ids that disagree.
    other = series_of("other · eval", seeds=(11, 12, 13), data=1)
    assert share_ids([other, back])[0].points[0].per_sample.ids is None
    clash = series_of("clash · eval", ids=True)
    clash.points[0].per_sample.ids = [f"x-{i}" for i in clash.points[0].per_sample.index]
    assert share_ids([live, back, clash])[0].points[0].per_sample.ids is None


def test_evolution_draws_the_model_s_own_answers_where_a_run_has_them():
    """Generate-mode scores add a dotted line to the accuracy and mass panels, at their values;
    a run without them draws none (and no legend entry)."""
    plain = series_of("plain")
    fig = evolution_figure([plain])
    assert not any(line.get_linestyle() == ":" for ax in fig.axes for line in ax.get_lines())
    assert not any("own answers" in t.get_text() for t in fig.legends[0].get_texts())
    gen = series_of("gen")
    want = {}
    for i, p in enumerate(gen.points):
        acc, mass = 0.5 + 0.1 * i, 0.9 + 0.01 * i
        p.metrics.scalars.update({"eval_decision_gen_accuracy": acc, "eval_decision_gen_prob_mass": mass})
        want.setdefault("accuracy", []).append(acc)
        want.setdefault("decision mass", []).append(mass)
    fig = evolution_figure([gen])
    for ax in fig.axes:
        dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        panel = next((k for k in want if ax.get_title().startswith(k)), None)
        if panel is None:
            assert not dotted, ax.get_title()
            continue
        assert len(dotted) == 1 and dotted[0].get_label() == "gen: own answers"
        assert list(dotted[0].get_xdata()) == [10, 20, 30]
        assert list(dotted[0].get_ydata()) == pytest.approx(want[panel])
    assert any("own answers" in t.get_text() for t in fig.legends[0].get_texts())
