"""``tokcal report``: one self-contained HTML report from MLflow, W&B, local or extract data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EXAMPLE = r"""examples:
  # the runs that a training output folder's tokcal.json records (what `tokcal demo` leaves)
  tokcal report tokcal-demo/train --output report.html

  # an MLflow run (the run ID is on the run's page), in a sqlite store or on a server
  tokcal report mlflow:4f0c2b9e... --tracking-uri sqlite:///mlflow.db --output report.html

  # two runs overlaid: a local store and a W&B run (W&B needs the network and `wandb login`)
  tokcal report out/tokcal wandb:my-team/my-ft/3x7kq2a1 --output compare.html

  # `tokcal extract` files, one per step (step read off the name, or given)
  tokcal report ckpt-100.jsonl ckpt-200.jsonl --output report.html
  tokcal report a.jsonl b.jsonl --steps 100 200 --output report.html

  # compare two runs at the evaluation at or before step 400 (default: each run's last)
  tokcal report out-lr1e-5/tokcal out-lr3e-5/tokcal --compare-step 400 --output compare.html

Writes report.html (images embedded: it opens from disk, offline, with no server) and the same
PNGs in report_files/ beside it. With two series or more it starts with their comparison; runs
that kept per-sample records (the default) get a trajectory heatmap, flips per step and the most
confidently wrong decisions.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="an HTML report: decision metrics over steps, reliability diagrams, histograms, per-sample analysis",
        description="Draw the evolution over steps (decision mass, P per label, confidence, accuracy, ECE) "
        "of one or more runs overlaid, their comparison at one evaluation, each step's reliability diagram "
        "and histograms, and per run its per-sample analysis (trajectory heatmap, flips, risk-coverage, "
        "most confidently wrong decisions), into one self-contained HTML file plus PNGs.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tokcal.trackers.base import backend_class, backend_names

    forms = [backend_class(name).source_form for name in backend_names()]
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help=f"{', '.join(f for f in forms if f)}, a training output folder with tokcal.json, "
                        "or extract .jsonl files")
    p.add_argument("--output", "-o", default="report.html", metavar="FILE", help="HTML file (default: report.html)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for mlflow: sources (default: MLFLOW_TRACKING_URI, "
                   "else MLflow's default, mlflow.db in the current folder; a store that is not there is an error)")
    p.add_argument("--steps", nargs="+", type=int, metavar="N", help="the step of each extract file, in order")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="extract files: the labels, positive first")
    p.add_argument("--title", default="tokcal report", help="the page title")
    p.add_argument("--compare-step", type=int, metavar="N",
                   help="compare the runs (and list wrong decisions) at each one's last evaluation at or "
                        "before step N (default: each run's last evaluation)")
    p.add_argument("--no-step-figures", action="store_true",
                   help="leave out the per-step reliability diagrams and histograms (faster)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokcal.errors import TokcalError
    from tokcal.io import check_outputs
    from tokcal.jobs.report import read_sources, write_report

    t0 = time.perf_counter()
    if args.compare_step is not None and args.compare_step < 0:
        raise TokcalError(f"expected --compare-step to be a step >= 0, got {args.compare_step}")
    check_outputs({"--output": args.output}, [s for s in args.sources if Path(s).is_file()])
    series = read_sources(args.sources, tracking_uri=args.tracking_uri, steps=args.steps, labels=args.labels)
    out = write_report(series, args.output, title=args.title, step_figures=not args.no_step_figures,
                       compare_step=args.compare_step, progress=not args.quiet)
    for s in series:
        back = sum(p.backfilled for p in s.points)
        print(f"{s.name}: {len(s.points)} steps ({s.steps[0]}..{s.steps[-1]}), {back} backfilled")
    print(f"report: {out} (PNGs in {out.with_name(out.stem + '_files')}/) in {time.perf_counter() - t0:.1f}s")
    return 0
