"""The report's figures and its one self-contained HTML file (see :mod:`tokcal.jobs.report`).

The page: the comparison of the series (two or more; :mod:`tokcal.jobs.report_analysis`),
the evolution over steps, then per series its table, its per-sample analysis (trajectory
heatmap, flips, risk-coverage, most confidently wrong) and each step's figures.

Everything the page shows is inside it: PNGs as base64 ``data:`` URIs, the style and a few
lines of script (a step slider per series; without script every step shows in a grid).
The same PNGs are written beside it in ``<name>_files/``.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from tokcal.core.plots import MIN_BIN_COUNT, figure_to_png, metric_figures
from tokcal.errors import TokcalError
from tokcal.jobs.report_analysis import (
    COLORS,
    check_compare_step,
    comparison_section,
    fmt3,
    img_tag,
    per_sample_section,
    png,
    share_ids,
)

if TYPE_CHECKING:
    from tokcal.jobs.report import Series

#: The evolution panels: (title, scalar name without prefix, or None for P per label).
PANELS: tuple[tuple[str, str | None], ...] = (
    ("decision mass (sum of P(label))", "decision_prob_mass"),
    ("mean P per label", None),
    ("confidence (mean raw P of the predicted label)", "decision_confidence"),
    ("accuracy", "decision_accuracy"),
    ("ECE", "decision_ece"),
    ("NLL (normalised)", "decision_nll"),
)
TABLE: tuple[tuple[str, str], ...] = (("mass", "decision_prob_mass"), ("confidence", "decision_confidence"),
                                      ("accuracy", "decision_accuracy"), ("ECE", "decision_ece"),
                                      ("Brier", "decision_brier"), ("NLL", "decision_nll"))
#: What the report's words mean, shown at its top.
WORDS = ("<b>confidence</b>: the raw P of the predicted label (the evolution, the tables, the histograms); "
         "<b>normalised confidence q</b>: that P divided by the sum of the labels' P, so the labels' q sum to 1 "
         "(the reliability diagrams' x axis, the wrong decisions' table); <b>mass</b>: the sum of the labels' P. "
         f"Faint bars in a reliability diagram: bins of fewer than {MIN_BIN_COUNT} decisions.")
#: Nothing outside the file may load: images are data: URIs, style and script are inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
STEP_DPI = 60  # per-step figures: small, there are many
_STYLES = ["-", "--", ":", "-."]
#: Panels that also draw the model's own answers (generate mode), dotted, where a run has them.
_GENERATED = {"decision_accuracy": "decision_gen_accuracy", "decision_prob_mass": "decision_gen_prob_mass"}


def evolution_figure(series: Sequence[Series]) -> Figure:
    """Each panel of :data:`PANELS` against the step, one colour per series; backfilled
    points are hollow, live ones filled. Where a series has generate-mode scores, the accuracy
    and mass panels also draw those of the model's own answers, dotted."""
    from tokcal.core.spec import label_key

    fig = Figure(figsize=(15, 7.5), dpi=90)
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, name) in zip(axes, PANELS):
        for i, s in enumerate(series):
            color = COLORS[i % len(COLORS)]
            steps = np.array(s.steps)
            back = np.array([p.backfilled for p in s.points], dtype=bool)
            lines = [(f"avg_p_{label_key(lab)}", f"{s.name}: P({lab})", _STYLES[j % len(_STYLES)])
                     for j, lab in enumerate(s.labels)] if name is None else [(name, s.name, "-")]
            if name in _GENERATED:
                lines.append((_GENERATED[name], f"{s.name}: own answers", ":"))
            for key, label, style in lines:
                y = np.array([p.scalar(key) for p in s.points])
                if np.all(np.isnan(y)):
                    continue
                ax.plot(steps, y, style, color=color, lw=1.5, label=label)
                ax.plot(steps[~back], y[~back], "o", color=color, ms=4)
                if back.any():
                    ax.plot(steps[back], y[back], "o", mfc="white", mec=color, ms=5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        if name in ("decision_prob_mass", "decision_confidence", "decision_accuracy") or name is None:
            ax.set_ylim(-0.02, 1.02)
    # One legend under the panels (series by colour, labels by line style), covering no line.
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], lw=2, label=s.name) for i, s in enumerate(series)]
    labels = list(dict.fromkeys(lab for s in series for lab in s.labels))
    handles += [Line2D([], [], color="#444", ls=_STYLES[j % len(_STYLES)], label=f"P({lab}) (mean P per label)")
                for j, lab in enumerate(labels)]
    if any(not np.isnan(p.scalar(key)) for s in series for p in s.points for key in _GENERATED.values()):
        handles.append(Line2D([], [], color="#444", ls=":", label="the model's own answers (generate mode)"))
    handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="#444", label="backfilled point"))
    rows = -(-len(handles) // 4)
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("Decision metrics over training", fontsize=11)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 1))
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "series"


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;
padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:12px} img{max-width:100%;height:auto} img.wide{width:100%}
table{border-collapse:collapse;font-size:12px;margin:8px 0} td,th{border:1px solid #ddd;padding:2px 8px;
text-align:right} th{background:#f4f4f4} tr.back td{color:#8a5a00}
.step{display:inline-block;vertical-align:top;margin:4px;border:1px solid #eee;padding:4px}
.js .steps:not(.grid) .step{display:none} .js .steps:not(.grid) .step.on{display:block}
.ctl{display:none;margin:6px 0} .js .ctl{display:block} .ctl input[type=range]{width:420px;vertical-align:middle}
.note{color:#8a5a00}
img.flips,img.risk-coverage{display:inline-block;max-width:49%} table.wrong td.text{text-align:left;max-width:520px;
font-size:11px;color:#444} table.compare th{text-align:left} h4{margin:10px 0 2px;font-size:14px}
table.compare .ci{color:#666;font-size:11px} table.compare .diff{font-size:11px} .diff.better{color:#2a7a2a}
.diff.worse{color:#b03030} .diff.same{color:#666}
"""

_SCRIPT = """
document.documentElement.classList.add('js');
document.querySelectorAll('.steps').forEach(function(box){
  var r=box.querySelector('input[type=range]'), items=box.querySelectorAll('.step'),
      lab=box.querySelector('.steplabel'), grid=box.querySelector('input[type=checkbox]');
  function show(){items.forEach(function(el,i){el.classList.toggle('on', i==r.value);});
    lab.textContent=items[r.value].getAttribute('data-label');}
  r.addEventListener('input', show); grid.addEventListener('change', function(){box.classList.toggle('grid', grid.checked);});
  show();
});
"""


def write_report(series: Sequence[Series], output: str | os.PathLike[str], *, title: str = "tokcal report",
                 step_figures: bool = True, compare_step: int | None = None, progress: bool = False) -> Path:
    """Write ``output`` (HTML) and its PNGs in ``<output stem>_files/``; returns the HTML path.

    Args:
        series: what to draw (see :func:`tokcal.jobs.report.read_sources`).
        step_figures: draw each step's reliability diagrams and histograms (the slowest part).
        compare_step: compare (and list the wrong decisions of) each series' last evaluation
            at or before this step; default: the last evaluation.
        progress: a progress bar of the evaluations drawn, on stderr.

    Raises:
        TokcalError: nothing to draw, ``output`` is a folder, or ``compare_step`` precedes
            every evaluation.
    """
    import matplotlib

    # Every text drawn as written: a ``$`` in a label or run name is a dollar sign, not TeX
    # that matplotlib may fail to parse (which would fail every figure).
    with matplotlib.rc_context({"text.parse_math": False}):
        return _write_report(series, output, title=title, step_figures=step_figures, compare_step=compare_step,
                             progress=progress)


def _write_report(series: Sequence[Series], output: str | os.PathLike[str], *, title: str, step_figures: bool,
                  compare_step: int | None, progress: bool) -> Path:
    if not series or not any(s.points for s in series):
        raise TokcalError("nothing to report: expected at least one evaluation")
    check_compare_step(series, compare_step)
    series = share_ids(series)
    out = Path(output)
    if out.is_dir():
        raise TokcalError(f"expected an output file path (report.html), got a folder: {out}")
    files = out.with_name(f"{out.stem}_files")
    files.mkdir(parents=True, exist_ok=True)

    def save(rel: str, data: bytes) -> bytes:
        path = files / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    evo = save("evolution.png", png(evolution_figure(series)))
    names = ", ".join(html.escape(s.name) for s in series)
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><div class=meta>{len(series)} series: {names} · generated "
             f"{time.strftime('%Y-%m-%d %H:%M')} by tokcal report · PNGs in {html.escape(files.name)}/</div>",
             f"<p class=meta>{WORDS}</p>",
             comparison_section(series, compare_step, save),
             "<h2>Evolution over steps</h2>", img_tag(evo, "decision metrics over steps", "wide")]
    bar = None
    if progress and step_figures:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(s.points) for s in series), desc="report", unit="eval", file=sys.stderr)
    try:
        body = _series_blocks(series, compare_step, save, step_figures, bar)
    finally:
        if bar is not None:
            bar.close()
    parts += body
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _series_blocks(series: Sequence[Series], compare_step: int | None, save, step_figures: bool, bar) -> list[str]:
    """Per series: its heading, notes, table, per-sample analysis and per-step figures."""
    parts: list[str] = []
    used: set[str] = set()
    for s in series:
        slug = _slug(s.name)
        while slug in used:
            slug += "_"
        used.add(slug)
        parts.append(f"<h2>{html.escape(s.name)}</h2><div class=meta>{html.escape(s.source)}</div>")
        parts += [f"<p class=note>{html.escape(n)}</p>" for n in s.notes]
        parts.append(_table(s))
        parts.append(per_sample_section(s, slug, compare_step, save))
        if step_figures:
            parts.append(_steps_block(s, slug, save, bar))
    return parts


def _table(s: Series) -> str:
    from tokcal.core.spec import label_key

    heads = ["step"] + [n for n, _ in TABLE[:1]] + [f"P({lab})" for lab in s.labels] + [n for n, _ in TABLE[1:]]
    rows = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "<th>how</th></tr>"]
    for p in s.points:
        vals = [p.scalar(TABLE[0][1])] + [p.scalar(f"avg_p_{label_key(lab)}") for lab in s.labels]
        vals += [p.scalar(k) for _, k in TABLE[1:]]
        cls = " class=back" if p.backfilled else ""
        cells = "".join(f"<td>{fmt3(v)}</td>" for v in vals)
        rows.append(f"<tr{cls}><td>{p.step}</td>{cells}<td>{'backfilled' if p.backfilled else 'live'}</td></tr>")
    return "".join(rows) + "</table>"


#: The per-step figures (:func:`~tokcal.core.plots.metric_figures`' names) and their alt texts.
STEP_FIGURES = (("reliability", "reliability"), ("reliability_positive", "positive-class reliability"),
                ("histograms", "histograms"))


def _steps_block(s: Series, slug: str, save, bar=None) -> str:
    """Each step's figures. They are drawn on figures made once and repainted per step
    (:func:`~tokcal.core.plots.metric_figures`): building a figure's axes and ticks took most
    of the time when every step made new ones."""
    items = []
    for p in s.points:
        where = f"step {p.step}"
        figs = metric_figures(p.metrics, step=p.step)
        imgs = [img_tag(save(f"{slug}/step_{p.step:06d}_{name}.png", figure_to_png(figs[name], STEP_DPI)),
                        f"{alt} {where}") for name, alt in STEP_FIGURES if name in figs]
        if bar is not None:
            bar.update(1)
        if not imgs:
            continue
        label = f"step {p.step}" + (" (backfilled)" if p.backfilled else "")
        items.append(f'<div class=step data-label="{html.escape(label)}"><b>{html.escape(label)}</b><br>'
                     + "".join(imgs) + "</div>")
    if not items:
        return "<p class=meta>No reliability bins or histograms in this source.</p>"
    ctl = (f'<div class=ctl>step <input type=range min=0 max={len(items) - 1} value={len(items) - 1} step=1> '
           '<b class=steplabel></b> <label><input type=checkbox> show all steps</label></div>')
    return f"<h3>Reliability and histograms per step</h3><div class=steps>{ctl}{''.join(items)}</div>"
