"""``tokcal report`` over many evaluations: the per-step figures, before and after reusing
one figure per kind (painted again for each step) instead of building new axes per step.

A simulated run (``tokcal.demo.simulated.simulate_run``: 200 samples per evaluation, per-sample
records) is logged to a real local store, read back as ``tokcal report`` reads it, and the
report is written twice in one process: once with the per-step figures built as before (a
new figure per step and kind), once as now. Prints both times, their ratio, and the peak
Python allocation (tracemalloc) of each. The ratio is the result; times depend on the machine.

Measured (2 shared AMD EPYC cores, 30 evaluations of 200 samples, two runs): before/after
3.09x (126.2 s -> 40.9 s) and 2.13x (272.2 s -> 127.6 s, the machine busier); peak Python
allocation unchanged (30.7 -> 30.9 MiB). What is left is matplotlib drawing each figure
(tick labels and texts, about 0.25 s per figure at 60 dpi here); ``--no-step-figures``
skips the per-step figures altogether.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import common  # noqa: E402


def _old_steps_block(s, slug, save, bar=None) -> str:
    """The per-step figures as they were drawn before: new figures for every step."""
    import html

    from tokcal.core.plots import histogram_figure, reliability_diagram
    from tokcal.jobs.report_analysis import img_tag, png
    from tokcal.jobs.report_html import STEP_DPI

    items = []
    for p in s.points:
        m, where = p.metrics, f"step {p.step}"
        imgs = []
        if m.reliability is not None:
            fig = reliability_diagram(m.reliability, ece=p.scalar("decision_ece"), title=f"Reliability @ {where}")
            imgs.append(img_tag(save(f"{slug}/step_{p.step:06d}_reliability.png", png(fig, STEP_DPI)), where))
        if m.positive_reliability is not None:
            fig = reliability_diagram(m.positive_reliability, title=f"P({m.labels[0]}) calibration @ {where}",
                                      positive=m.labels[0])
            imgs.append(img_tag(save(f"{slug}/step_{p.step:06d}_reliability_positive.png", png(fig, STEP_DPI)),
                                where))
        if m.histograms:
            fig = histogram_figure(m.histograms, title=f"Histograms @ {where}")
            imgs.append(img_tag(save(f"{slug}/step_{p.step:06d}_histograms.png", png(fig, STEP_DPI)), where))
        if bar is not None:
            bar.update(1)
        items.append(f'<div class=step data-label="{html.escape(where)}">' + "".join(imgs) + "</div>")
    return "<div class=steps>" + "".join(items) + "</div>"


def _timed(series, out: Path) -> tuple[float, float]:
    from tokcal.jobs.report_html import write_report

    tracemalloc.start()
    t0 = time.perf_counter()
    write_report(series, out)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    ap = common.parser(__doc__, "python benchmarks/bench_report.py --evaluations 40")
    ap.add_argument("--evaluations", type=int, default=40, help="evaluations in the simulated run (default: 40)")
    ap.add_argument("--samples", type=int, default=200, help="samples per evaluation (default: 200)")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR,
                    help="where the simulated run's store is made (a temporary folder inside it)")
    a = ap.parse_args()
    from tokcal.demo.simulated import simulate_run
    from tokcal.jobs import report_html
    from tokcal.jobs.report import read_sources
    from tokcal.trackers import open_tracker

    a.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        work = Path(tmp)
        with open_tracker("local", local_dir=work / "store") as run:
            simulate_run(run, seed=1, steps=[10 * (i + 1) for i in range(a.evaluations)], n=a.samples)
        series = read_sources([str(work / "store")])
        new = report_html._steps_block
        report_html._steps_block = _old_steps_block
        try:
            before = _timed(series, work / "before" / "report.html")
        finally:
            report_html._steps_block = new
        after = _timed(series, work / "after" / "report.html")
    print(common.markdown_table(
        f"tokcal report, {a.evaluations} evaluations of {a.samples} samples ({common.machine().get('cpu', 'cpu')})",
        ["per-step figures", "report s", "peak MiB (tracemalloc)"],
        [["new figures per step (before)", f"{before[0]:.1f}", f"{before[1]:.1f}"],
         ["one figure per kind, repainted (now)", f"{after[0]:.1f}", f"{after[1]:.1f}"]],
        f"ratio before/after: {before[0] / after[0]:.2f}x time, {before[1] / max(after[1], 1e-9):.2f}x memory"))


if __name__ == "__main__":
    main()
