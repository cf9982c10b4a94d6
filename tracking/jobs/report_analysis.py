"""The report's decision-analysis views (HTML fragments and their figures), which
:func:`tokcal.jobs.report_html.write_report` places on the page:

* the **comparison** (two series or more): one evaluation of each series (the last, or
  the last at or before ``compare_step``) with the reliability curves and risk-coverage
  curves overlaid, and their metrics side by side;
* per series with per-sample records (:class:`~tokcal.core.per_sample.PerSample`):
  the **trajectory heatmap** (samples x steps of q(true label), sorted by when each
  sample was learned), the **flips per step**, the **risk-coverage curves** of every step
  with the selected one bold, and the **most confidently wrong** decisions at the
  selected step as a table. A series without records gets a one-line note instead.

The numbers come from :mod:`tokcal.core.per_sample_views`; this module only draws.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from tokcal.core.bootstrap import HEADLINE, confidence_intervals
from tokcal.core.compare import A_BETTER, B_BETTER, NO_DIFFERENCE, Comparison, compare_records
from tokcal.core.per_sample import PerSample
from tokcal.core.per_sample_views import (
    TOP_WRONG,
    confidently_wrong,
    learning_heatmap,
    sample_risk_coverage,
    sample_trajectories,
)
from tokcal.core.plots import figure_to_png
from tokcal.core.selective import RiskCoverage
from tokcal.errors import TokcalError

if TYPE_CHECKING:
    from tokcal.trackers.base import Point, Series

#: Rows of the comparison table: (name, scalar without prefix, +1 higher is better / -1 lower / 0 neither).
COMPARE_ROWS: tuple[tuple[str, str, int], ...] = (
    ("samples", "decision_samples", 0),
    ("accuracy", "decision_accuracy", 1),
    ("balanced accuracy", "decision_balanced_accuracy", 1),
    ("macro F1", "decision_macro_f1", 1),
    ("MCC", "decision_mcc", 1),
    ("ECE", "decision_ece", -1),
    ("smooth ECE", "decision_smece", -1),
    ("Brier", "decision_brier", -1),
    ("NLL", "decision_nll", -1),
    ("AUROC", "decision_auroc", 1),
    ("mass", "decision_prob_mass", 1),
    ("mass p05", "decision_mass_p05", 1),
    ("AURC", "decision_aurc", -1),
    ("accuracy @ 80% coverage", "decision_accuracy_cov80", 1),
)
ANALYSIS_DPI = 72  # one figure of each kind per series: modest
TEXT_CHARS = 300  # prompt text shown per wrong decision
LINE_SHARE = 0.02  # the comparison's reliability lines join the bins holding at least this share
#: One colour per series, the same on every figure of the page.
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]

Save = Callable[[str, bytes], bytes]


def select_point(series: Series, compare_step: int | None) -> Point | None:
    """The series' last evaluation, or its last at or before ``compare_step``; ``None`` if
    it has none there.

    Example:
        >>> from tokcal.core.metrics import DecisionMetrics
        >>> from tokcal.trackers.base import Point, Series
        >>> m = DecisionMetrics(["A", "B"], "eval_", {}, None)
        >>> s = Series.of("run", [Point(10, m), Point(20, m), Point(30, m)])
        >>> select_point(s, None).step, select_point(s, 25).step, select_point(s, 5)
        (30, 20, None)
    """
    if compare_step is None:
        return series.points[-1] if series.points else None
    before = [p for p in series.points if p.step <= compare_step]
    return before[-1] if before else None


def check_compare_step(series: Sequence[Series], compare_step: int | None) -> None:
    """A one-line error when ``compare_step`` is not a step >= 0 or precedes every series' first evaluation."""
    if compare_step is None:
        return
    if isinstance(compare_step, bool) or not isinstance(compare_step, (int, np.integer)) or compare_step < 0:
        raise TokcalError(f"expected --compare-step to be a step >= 0, got {compare_step!r}")
    if all(select_point(s, compare_step) is None for s in series):
        first = min(s.points[0].step for s in series if s.points)
        raise TokcalError(f"expected --compare-step at or after the first evaluation (step {first}), got {compare_step}")


def png(fig: Figure, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes, at ``dpi`` when given (else the figure's own)."""
    if dpi is not None:
        fig.set_dpi(dpi)
    return figure_to_png(fig)


def img_tag(data: bytes, alt: str, cls: str = "") -> str:
    """An ``<img>`` holding the PNG ``data`` as a ``data:`` URI (the page loads nothing else)."""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def fmt3(v: float | None) -> str:
    """A table cell's number: 3 decimals, a dash for missing (None, NaN)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _curve_of(p: Point) -> RiskCoverage | None:
    """The point's risk-coverage curve as logged, else from its per-sample record."""
    if p.metrics.risk_coverage is not None:
        return p.metrics.risk_coverage
    return sample_risk_coverage(p.per_sample) if p.per_sample is not None else None


def _where(compare_step: int | None) -> str:
    return "last evaluation" if compare_step is None else f"last evaluation at or before step {compare_step}"


# --------------------------------------------------------------------------- sample names


def share_ids(series: Sequence[Series]) -> list[Series]:
    """The series with one name per sample: a per-sample record without record ids (the
    callback's, when the eval set has no ``id`` column) takes them, by sample index, from a
    record of the same metric prefix that has them (a backfill of the same data), so the
    report names sample 112 ``holdout-r2-55`` everywhere instead of ``#112`` on one side.

    Ids are shared only where that is safe: every record with ids under the prefix agrees on
    the id and the true label of each index, and the record without ids has each of its
    indices there with the same true label. The series given are not changed.

    Example:
        >>> from tokcal.core.metrics import compute_metrics
        >>> from tokcal.trackers.base import Point, Series
        >>> probs, gt = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1])
        >>> m = compute_metrics(probs, gt, ["Accept", "Reject"])
        >>> live = PerSample(["Accept", "Reject"], np.arange(2), gt, probs)
        >>> back = PerSample(["Accept", "Reject"], np.arange(2), gt, probs, ids=["a-1", "a-2"])
        >>> out = share_ids([Series("run", [Point(10, m, False, live), Point(20, m, True, back)])])
        >>> out[0].points[0].per_sample.sample_name(1)
        'a-2'
    """
    import dataclasses

    known: dict[str, dict[int, tuple[str, int]]] = {}  # prefix -> index -> (id, gt)
    clash: set[str] = set()
    for s in series:
        for p in s.points:
            rec = p.per_sample
            if rec is None or rec.ids is None:
                continue
            table = known.setdefault(p.metrics.prefix, {})
            for i, (idx, rid, g) in enumerate(zip(rec.index.tolist(), rec.ids, rec.gt.tolist())):
                if table.setdefault(int(idx), (str(rid), int(g))) != (str(rid), int(g)):
                    clash.add(p.metrics.prefix)
    out = []
    for s in series:
        points = []
        for p in s.points:
            rec, table = p.per_sample, known.get(p.metrics.prefix)
            if (rec is not None and rec.ids is None and table and p.metrics.prefix not in clash
                    and all(table.get(int(i), ("", -1))[1] == int(g) for i, g in zip(rec.index.tolist(), rec.gt.tolist()))):
                p = dataclasses.replace(p, per_sample=dataclasses.replace(
                    rec, ids=[table[int(i)][0] for i in rec.index.tolist()]))
            points.append(p)
        out.append(dataclasses.replace(s, points=points))
    return out


def legend_below(ax: Any, ncol: int = 1) -> None:
    """The axes' legend under the axes, where it covers no line."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def wrapped(text: str, width_in: float, fontsize: float = 10) -> str:
    """``text`` broken into lines that fit a figure ``width_in`` inches wide.

    Example:
        >>> len(wrapped("a " * 30, 2.0).splitlines()) > 1
        True
    """
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))  # a character is about 0.55 em wide
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def data_range(values: Sequence[np.ndarray], pad: float = 0.05) -> tuple[float, float]:
    """A square plot's common [lo, hi] range that holds every value (and a margin), inside
    [0, 1]; [0, 1] when there is none.

    Example:
        >>> data_range([np.array([0.8, 0.95]), np.array([0.9])]), data_range([])
        ((0.75, 1.0), (0.0, 1.0))
    """
    finite = np.concatenate([np.asarray(v, dtype=float).ravel() for v in values] or [np.zeros(0)])
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return 0.0, 1.0
    lo = max(0.0, math.floor((float(finite.min()) - pad) * 20) / 20)  # on a 0.05 grid
    hi = min(1.0, math.ceil((float(finite.max()) + pad) * 20) / 20)
    if hi - lo < 0.2:  # a range too small to read: 0.2 wide at least
        lo, hi = (max(0.0, hi - 0.2), hi) if hi - 0.2 >= 0 else (0.0, 0.2)
    return round(lo, 2), round(hi, 2)


# --------------------------------------------------------------------------- comparison


def comparison_figure(chosen: Sequence[tuple[Series, Point]]) -> Figure:
    """Reliability curves (top label: mean normalised confidence q against accuracy per
    bin), zoomed to the bins on the lines (those holding at least :data:`LINE_SHARE` of the
    decisions; the title counts the smaller ones left below the view) with the diagonal kept,
    and risk-coverage curves of the chosen evaluations, one colour per series; the legends
    under the axes."""
    fig = Figure(figsize=(12, 5.2 + 0.18 * len(chosen)))
    rel, rc = fig.subplots(1, 2)
    rel.plot([0, 1], [0, 1], ":", color="#888", lw=1, label="perfect calibration")
    any_curve = False
    seen: list[np.ndarray] = []  # the bins on the lines: the zoom holds them all
    small: list[tuple[np.ndarray, np.ndarray]] = []  # the other non-empty bins
    for i, (s, p) in enumerate(chosen):
        color = COLORS[i % len(COLORS)]
        name = f"{s.name} @ {p.step}"
        b = p.metrics.reliability
        if b is not None:
            share = np.asarray(b.counts) / max(1, int(np.sum(b.counts)))
            conf, acc = np.asarray(b.confidence), np.asarray(b.accuracy)
            # every non-empty bin as a marker, its area the bin's share of the decisions (what the
            # ECE weighs); the line only through bins with at least LINE_SHARE, so that a bin of
            # one or two decisions does not draw a spike
            line = share >= LINE_SHARE
            seen += [conf[line], acc[line]]
            small.append((conf[(share > 0) & ~line], acc[(share > 0) & ~line]))
            rel.plot(conf[line], acc[line], "-", color=color, lw=1.5,
                     label=f"{name} (ECE {fmt3(p.scalar('decision_ece'))})")
            rel.scatter(conf[share > 0], acc[share > 0], s=8 + 200 * share[share > 0], color=color, alpha=0.6,
                        zorder=3)
        curve = _curve_of(p)
        if curve is not None:
            any_curve = True
            rc.plot(curve.coverage, curve.risk, "o-", color=color, ms=3, lw=1.5,
                    label=f"{name} (AURC {fmt3(p.scalar('decision_aurc'))})")
    lo, hi = data_range(seen)
    top = hi + 0.02 * (hi - lo)  # room for the markers of bins at accuracy 1
    outside = sum(int(np.sum((c < lo) | (a < lo))) for c, a in small)
    rel.set(xlim=(lo, top), ylim=(lo, top), aspect="equal", adjustable="box",
            xlabel="normalised confidence q of the predicted label (mean per bin)", ylabel="accuracy",
            title=wrapped(f"Reliability (marker area: share of decisions; line: bins >= {LINE_SHARE:.0%})"
                          + ("" if (lo, hi) == (0.0, 1.0) else f"\nzoomed to [{lo:g}, {hi:g}]")
                          + (f"; {outside} small bin{'s' * (outside > 1)} below it" if outside else ""), 6.0, 12))
    rc.set(xlim=(0, 1.02), xlabel="coverage (most confident kept)", ylabel="risk (error rate of the kept)",
           title="Risk-coverage")
    if not any_curve:
        rc.text(0.5, 0.5, "no risk-coverage curves in these sources", ha="center", va="center",
                transform=rc.transAxes, color="#888")
    for ax in (rel, rc):
        ax.grid(alpha=0.3)
        legend_below(ax)
    fig.tight_layout()
    return fig


def comparison_section(series: Sequence[Series], compare_step: int | None, save: Save) -> str:
    """The comparison block (empty for fewer than two series)."""
    if len(series) < 2:
        return ""
    chosen = [(s, p) for s in series if (p := select_point(s, compare_step)) is not None]
    missing = [s.name for s in series if select_point(s, compare_step) is None]
    parts = [f'<section id=comparison><h2>Comparison: {html.escape(_where(compare_step))} of each series</h2>']
    if missing:
        parts.append(f"<p class=note>left out (no evaluation at or before step {compare_step}): "
                     f"{html.escape(', '.join(missing))}</p>")
    data = save("comparison.png", png(comparison_figure(chosen), ANALYSIS_DPI))
    parts.append(img_tag(data, "reliability and risk-coverage curves of each series", "wide comparison"))
    parts.append(_compare_table(chosen))
    parts.append("<p class=meta>Bold: the best value of a row (higher, or lower for ECE, Brier, NLL and AURC).</p>"
                 "</section>")
    return "".join(parts)


def _uncertainty(chosen: Sequence[tuple[Series, Point]]) -> tuple[list[dict], list[Comparison | None], list[str]]:
    """Each evaluation's bootstrap intervals and each later one's paired comparison with the
    first, from their per-sample records (empty where a record is missing), and notes."""
    intervals: list[dict] = []
    paired: list[Comparison | None] = []
    notes: list[str] = []
    first = chosen[0][1].per_sample if chosen else None
    for i, (s, p) in enumerate(chosen):
        rec = p.per_sample
        intervals.append(confidence_intervals(rec) if rec is not None and len(rec) else {})
        if i == 0 or rec is None or first is None or not len(rec) or not len(first):
            paired.append(None)
            continue
        try:
            paired.append(compare_records(first, rec))
        except TokcalError as exc:  # e.g. another eval set: the table still shows the values, and says why
            paired.append(None)
            notes.append(f"{s.name} is not compared with {chosen[0][0].name}: {exc}")
        else:
            notes += [f"{s.name} against {chosen[0][0].name}: {n}" for n in paired[-1].notes]
    if any(not iv for iv in intervals):
        notes.append("no interval where a series holds no per-sample record")
    return intervals, paired, notes


_VERDICT_WORDS = {B_BETTER: "better", A_BETTER: "worse", NO_DIFFERENCE: "no difference detected"}


def _diff_cell(c: Comparison | None, metric: str | None) -> str:
    if c is None or metric is None or metric not in {r.metric for r in c.rows}:
        return ""
    r = c.row(metric)
    word = _VERDICT_WORDS[r.verdict] + (" (exact test)" if metric == "accuracy" else "")
    cls = {B_BETTER: "better", A_BETTER: "worse"}.get(r.verdict, "same")
    return (f'<br><span class="diff {cls}" title="difference with the first series and its paired interval">'
            f"{r.diff:+.3f} [{r.low:+.3f}, {r.high:+.3f}] {word}</span>")


def _compare_table(chosen: Sequence[tuple[Series, Point]]) -> str:
    intervals, paired, notes = _uncertainty(chosen)
    by_key = {key: name for name, (key, _) in HEADLINE.items()}
    heads = "".join(f"<th>{html.escape(s.name)}<br><span class=meta>step {p.step}</span></th>" for s, p in chosen)
    rows = [f"<table class=compare id=compare-table><tr><th>metric</th>{heads}</tr>"]
    for name, key, better in COMPARE_ROWS:
        vals = [p.scalar(key) for _, p in chosen]
        finite = [v for v in vals if not math.isnan(v)]
        best = (max(finite) if better > 0 else min(finite)) if better and len(finite) > 1 else None
        metric = by_key.get(key)
        cells = []
        for i, v in enumerate(vals):
            if key == "decision_samples":
                cells.append(f"<td>{'–' if math.isnan(v) else int(v)}</td>")
                continue
            text = "<b>" + fmt3(v) + "</b>" if best is not None and v == best else fmt3(v)
            iv = intervals[i].get(metric) if metric else None
            if iv is not None:
                text += f' <span class=ci title="{100 * iv.level:g}% interval">[{fmt3(iv.low)}, {fmt3(iv.high)}]</span>'
            cells.append(f"<td>{text}{_diff_cell(paired[i], metric)}</td>")
        rows.append(f'<tr data-metric="{key}"><th>{html.escape(name)}</th>{"".join(cells)}</tr>')
    out = "".join(rows) + "</table>"
    if any(iv for iv in intervals):
        out += ("<p class=meta>In brackets: the 95% interval of each value (bootstrap over the samples, 1,000 "
                "resamples). Below, for each series after the first: the difference with the first, its 95% "
                "interval over the samples both evaluated, and whether it is better, worse or no difference was "
                "detected (accuracy: exact test on the samples they answer differently). See docs/comparisons.md."
                "</p>")
    out += "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    return out


# --------------------------------------------------------------------------- per sample


def heatmap_figure(records: Sequence[tuple[int, PerSample]], title: str) -> Figure:
    """Samples x steps of q(true label) (red: wrong side, green: right), absent cells grey."""
    import matplotlib

    h = learning_heatmap(records)
    n, t = h.q_true.shape
    fig = Figure(figsize=(10, 4.8))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(h.q_true), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ticks = np.arange(t) if t <= 16 else np.unique(np.linspace(0, t - 1, 12).round().astype(int))
    ax.set_xticks(ticks, [f"{h.steps[i]:g}" for i in ticks], fontsize=8)
    learned = int(np.sum(~np.isnan(h.first_learned)))
    never = int(h.never_learned.sum())
    if n <= 40:
        ax.set_yticks(range(n), h.names, fontsize=6)
    else:
        ax.set_yticks([])
    if 0 < learned < n:
        ax.axhline(learned - 0.5, color="black", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{n} samples: learned early → late, then not learned")
    ax.set_title(wrapped(f"{title}\nq(true label) per sample and step: {learned} learned, "
                         f"{n - learned - never} forgotten, {never} never learned", 9.0), fontsize=10)
    fig.colorbar(im, ax=ax, label="q(true label)", fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


def flips_figure(records: Sequence[tuple[int, PerSample]], title: str) -> Figure:
    """Flips to wrong, flips to right and forgotten samples at each evaluation."""
    tr = sample_trajectories(records)
    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    for y, label, color, style in ((tr.flips_to_wrong, "to wrong (forgetting events)", "#C44E52", "o-"),
                                   (tr.flips_to_right, "to right", "#55A868", "s-"),
                                   (tr.forgotten, "forgotten (wrong, once right)", "#DD8452", "^--")):
        ax.plot(tr.steps, y, style, color=color, ms=4, lw=1.5, label=label)
    ax.set(xlabel="step", ylabel="samples")
    ax.set_title(wrapped(f"{title}\nflips per step", 5.5), fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    legend_below(ax, ncol=2)
    fig.tight_layout()
    return fig


def risk_coverage_figure(points: Sequence[Point], selected: Point, title: str) -> Figure:
    """Every step's risk-coverage curve, light (early) to dark (late), the selected step bold."""
    import matplotlib

    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"]
    curves = [(p, c) for p in points if (c := _curve_of(p)) is not None]
    for j, (p, c) in enumerate(curves):
        if p is selected:
            continue
        ax.plot(c.coverage, c.risk, "-", color=cmap(0.3 + 0.6 * j / max(1, len(curves) - 1)), lw=1)
    sel = _curve_of(selected)
    if sel is not None:
        ax.plot(sel.coverage, sel.risk, "o-", color="black", ms=3, lw=2,
                label=f"step {selected.step} (AURC {fmt3(selected.scalar('decision_aurc'))})")
    ax.set(xlim=(0, 1.02), xlabel="coverage (most confident kept)", ylabel="risk")
    ax.set_title(wrapped(f"{title}\nrisk-coverage, all steps (light: early)", 5.5), fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    legend_below(ax)
    fig.tight_layout()
    return fig


def wrong_table(step: int, rec: PerSample, k: int = TOP_WRONG) -> str:
    """The ``k`` most confidently wrong decisions of one evaluation as an HTML table
    (text escaped, cut at :data:`TEXT_CHARS`)."""
    rows = confidently_wrong([(step, rec)], k=k)
    if not rows:
        return f"<p class=meta>No wrong decision at step {step}.</p>"
    heads = ["#", "sample", "step", "truth", "predicted", "normalised confidence q"] + [f"P({lab})" for lab in rec.labels]
    heads += ["mass"] + (["text"] if rec.text is not None else [])
    out = ["<table class=wrong><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"]
    for i, w in enumerate(rows, 1):
        cells = [str(i), html.escape(w.name), str(w.step), html.escape(rec.labels[w.gt]),
                 html.escape(rec.labels[w.pred]), fmt3(w.confidence)]
        cells += [fmt3(float(x)) for x in w.probs] + [fmt3(float(w.probs.sum()))]
        row = "".join(f"<td>{c}</td>" for c in cells)
        if rec.text is not None:
            t = w.text or ""
            row += f"<td class=text>{html.escape(t[:TEXT_CHARS] + ('…' if len(t) > TEXT_CHARS else ''))}</td>"
        out.append(f"<tr>{row}</tr>")
    return "".join(out) + "</table>"


def per_sample_section(s: Series, slug: str, compare_step: int | None, save: Save) -> str:
    """The per-sample views of one series, or a one-line note saying why there are none."""
    with_rec = [p for p in s.points if p.per_sample is not None]
    if with_rec and not any(len(p.per_sample) for p in with_rec if p.per_sample is not None):
        return ("<p class='note skipped per-sample-skipped'>Per-sample views skipped: the per-sample records "
                "hold no decisions (no answer position was found in any sample).</p>")
    if not with_rec:
        return ("<p class='note skipped per-sample-skipped'>Per-sample views skipped: this source holds no "
                "per-sample records (logged before tokcal kept them, with log_per_sample off, or read from "
                "a backend that does not return them).</p>")
    parts = [f'<div class=per-sample id="per-sample-{html.escape(slug)}"><h3>Per-sample analysis</h3>']
    if len(with_rec) < len(s.points):
        parts.append(f"<p class=note>{len(with_rec)} of {len(s.points)} evaluations hold per-sample records; "
                     "these views use those.</p>")
    records = [(p.step, p.per_sample) for p in with_rec if p.per_sample is not None]
    name = s.name
    heat = save(f"{slug}/per_sample_heatmap.png", png(heatmap_figure(records, name), ANALYSIS_DPI))
    parts.append(img_tag(heat, f"trajectory heatmap {name}", "wide heatmap"))
    if len(with_rec) > 1:
        flips = save(f"{slug}/per_sample_flips.png", png(flips_figure(records, name), ANALYSIS_DPI))
        parts.append(img_tag(flips, f"flips per step {name}", "flips"))
    else:
        parts.append("<p class=meta>One evaluation with per-sample records: no flips yet.</p>")
    selected = select_point(s, compare_step)
    if selected is not None:
        rc = save(f"{slug}/risk_coverage.png", png(risk_coverage_figure(s.points, selected, name), ANALYSIS_DPI))
        parts.append(img_tag(rc, f"risk-coverage {name}", "risk-coverage"))
    at = [p for p in with_rec if selected is not None and p.step <= selected.step]
    if at:
        parts.append(f"<h4>Most confidently wrong at step {at[-1].step} ({html.escape(_where(compare_step))})</h4>")
        parts.append(wrong_table(at[-1].step, at[-1].per_sample))
    else:
        parts.append(f"<p class=note>No per-sample record at or before step {compare_step}: "
                     "no list of wrong decisions.</p>")
    return "".join(parts) + "</div>"


__all__ = ["COMPARE_ROWS", "check_compare_step", "comparison_figure", "comparison_section", "flips_figure",
           "fmt3", "heatmap_figure", "img_tag", "per_sample_section", "risk_coverage_figure", "select_point",
           "wrong_table"]
