"""``tokcal compare``: is run B really better than run A? Paired intervals and tests on the
samples both evaluated, printed as a table."""

from __future__ import annotations

import argparse

EXAMPLE = r"""examples:
  # two runs (local store folders), each at its last evaluation
  tokcal compare out-lr1e-5/tokcal/run-a out-lr3e-5/tokcal/run-b

  # both at their last evaluation at or before step 400, accuracy and ECE only
  tokcal compare out-a/tokcal out-b/tokcal --step 400 --metric accuracy ece

  # one run against itself: did the last 200 steps change anything?
  tokcal compare out/tokcal --step 800 1000

  # MLflow runs (the run ID is on the run's page)
  tokcal compare mlflow:4f0c2b9e... mlflow:9a1d77c0... --tracking-uri http://127.0.0.1:5000

Prints, per metric, A's and B's value, the difference B - A with its 95% interval (paired
bootstrap over the samples both evaluated) and a verdict: "B better", "A better" or "no
difference detected". Accuracy's verdict comes from an exact test on the samples that A and
B answer differently (counts printed below the table). docs/comparisons.md explains how to
read it.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from tokcal.core.bootstrap import HEADLINE
    from tokcal.trackers.base import backend_class, backend_names

    p = sub.add_parser(
        "compare",
        help="compare two evaluations of the same samples: differences, intervals and verdicts",
        description="Compare evaluation B with evaluation A of the same samples (two runs, or two steps of one "
        "run): each headline metric's difference with a paired-bootstrap interval, an exact test for accuracy, "
        "and a verdict per metric. Both need per-sample records (kept by default).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    forms = [backend_class(name).source_form for name in backend_names()]
    where = f"{', '.join(f for f in forms if f)} or a training output folder with tokcal.json"
    p.add_argument("a", metavar="A", help=f"the baseline: {where}")
    p.add_argument("b", metavar="B", nargs="?", help="the run compared with A (default: A itself, at a second --step)")
    p.add_argument("--step", type=int, nargs="+", default=[], metavar="N",
                   help="compare at the last evaluation at or before step N (both), or give two steps: A's and "
                        "B's (default: each run's last evaluation)")
    p.add_argument("--metric", nargs="+", choices=list(HEADLINE), metavar="NAME",
                   help=f"metrics to compare, among {', '.join(HEADLINE)} (default: all)")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage (default: 0.95)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="the resamples' seed (default: 0)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for mlflow: sources (default: MLflow's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokcal.jobs.compare import compare_sources, format_comparison

    pair = compare_sources(args.a, args.b, steps=args.step, tracking_uri=args.tracking_uri,
                           n_resamples=args.resamples, level=args.level, seed=args.seed, metrics=args.metric)
    print(format_comparison(pair))
    return 0
