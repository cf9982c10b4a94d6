"""The logging side of one evaluation of ``--decisions`` decisions, per backend.

For a binary spec (Accept/Reject), each step the median of ``--repeats``, wall and CPU:

- ``metrics``: ``DecisionScores.metrics()`` (compute_metrics: scalars, bins, histograms,
  the temperature fit);
- ``figures``: every figure of one evaluation (``metric_figures``), rendered as the local
  store does (PNG) and as MLflow and W&B do (arrays);
- ``per-sample record``: building the evaluation's per-sample record and writing it as
  JSON (``PerSample.from_scores`` + ``to_json``), with its size in bytes;
- ``log_evaluation`` for each backend: ``local`` (files), ``mlflow`` (a sqlite store) and
  ``wandb`` (offline), everything the tracker does for one evaluation, figures and the
  per-sample record included (the callback's defaults);
- ``total``: metrics plus the tracker call, what one evaluation costs the logging thread;
- ``intervals``: the bootstrap intervals of the headline metrics (1,000 resamples, all eight
  metrics; ``confidence_intervals``) at ``--decisions`` and at 1,000 decisions, each metric
  group on its own (the smooth ECE's is most of it), and a paired comparison of two
  evaluations (``compare_records``). Not part of ``log_evaluation``: the report and
  ``tokcal compare`` compute them from the stored per-sample records.

Targets: all figures of one evaluation together under 0.5 s; the whole evaluation under 1 s
for each backend. ``--profile`` prints where the local backend's time goes.

``--training-thread N``: W&B and MLflow together as the training callback runs them (MLflow
in a background thread, W&B called from the training thread), ``N`` evaluations with
``--train-gap`` seconds of "training" between them, each case in a fresh process (so the
first evaluation pays its imports): the seconds the training thread is held per
evaluation, first one included, for W&B prepared and logged in that thread at the first
evaluation (``inline``: before) and for W&B set up at train begin with its rows prepared
in a worker thread (``threaded``: the default). Target: under 0.5 s at every evaluation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

EXAMPLE = ("python benchmarks/bench_logging.py --decisions 10000 --repeats 5 --backends local,mlflow,wandb\n"
           "  python benchmarks/bench_logging.py --decisions 2000 --training-thread 4")
THREAD_CASES = {"inline": (False, False), "threaded": (True, True)}  # name -> (threaded, warm_up)


def scores(n: int, seed: int = 0) -> Any:
    """``n`` binary decisions with some miscalibration and decision mass below 1."""
    import numpy as np

    from tokcal.core.scores import DecisionScores

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(2) * 0.7, size=n) * rng.uniform(0.6, 1.0, size=(n, 1))
    gt = (rng.random(n) < 0.3 + 0.4 * p[:, 0]).astype(np.int64) ^ 1
    return DecisionScores(["Accept", "Reject"], p, gt, np.arange(n))


def repeat(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn(step)`` over ``repeats`` calls after one warm-up."""
    fn(0)
    walls, cpus = [], []
    for i in range(repeats):
        with common.clock() as c:
            fn(i + 1)
        walls.append(c.wall)
        cpus.append(c.cpu)
    return common.median(walls), common.median(cpus)


def open_backend(name: str, root: Path) -> Any:
    from tokcal.trackers import open_tracker

    if name == "local":
        return open_tracker("local", local_dir=str(root / "local"))
    if name == "mlflow":
        return open_tracker("mlflow", tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="bench",
                            spool=False)
    if name == "wandb":
        os.environ.setdefault("WANDB_DIR", str(root))
        os.environ.setdefault("WANDB_SILENT", "true")
        return open_tracker("wandb", project="tokcal-bench", wandb_mode="offline", spool=False)
    raise SystemExit(f"expected a backend in local, mlflow, wandb, got {name!r}")


def training_thread_case(case: str, n: int, evaluations: int, gap: float) -> dict[str, Any]:
    """One case of ``--training-thread`` (run in its own process): W&B opened in this
    thread (train begin), MLflow opened and logged in a background thread; the seconds
    this thread spends in W&B's ``log_evaluation`` at each evaluation."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    root = Path(tempfile.mkdtemp(prefix="logging-thread-"))
    os.environ.update(WANDB_DIR=str(root), WANDB_SILENT="true", WANDB_MODE="offline")
    from tokcal.core.per_sample import PerSample
    from tokcal.trackers import open_tracker
    from tokcal.trackers.wandb import WandbTracker

    WandbTracker.threaded, WandbTracker.warm_up = THREAD_CASES[case]
    s = scores(n)
    background = ThreadPoolExecutor(max_workers=1)
    mlflow = background.submit(open_tracker, "mlflow", tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                               experiment="bench", spool=False)
    t0 = time.perf_counter()
    wandb = open_tracker("wandb", project="tokcal-bench", wandb_mode="offline", spool=False)
    opened = time.perf_counter() - t0
    held = []
    for i in range(evaluations):
        metrics, record = s.metrics(), PerSample.from_scores(s)  # the callback's own work, not timed
        step = 10 * (i + 1)
        background.submit(lambda m=metrics, st=step, r=record: mlflow.result().log_evaluation(m, st, per_sample=r))
        t = time.perf_counter()
        wandb.log_evaluation(metrics, step, per_sample=record)
        held.append(time.perf_counter() - t)
        time.sleep(gap)  # training steps between evaluations
    t = time.perf_counter()
    wandb.close()
    closed = time.perf_counter() - t
    background.shutdown(wait=True)
    mlflow.result().close()
    return {"case": case, "open": opened, "held": held, "close": closed}


def training_thread(a: Any, report: Any) -> None:
    """``--training-thread``: each case in a fresh process, then one table."""
    import json
    import subprocess

    results = {}
    for case in THREAD_CASES:
        cmd = [sys.executable, __file__, "--thread-case", case, "--decisions", str(a.decisions),
               "--training-thread", str(a.training_thread), "--train-gap", str(a.train_gap)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])
    rows = []
    for case, r in results.items():
        held = r["held"]
        rows.append([case, r["open"], held[0], max(held[1:] or held), common.median(held), r["close"]])
    report.table(f"W&B + MLflow: seconds the training thread is held ({a.training_thread} evaluations of "
                 f"{a.decisions:,} decisions)", ["case", "open (train begin)", "first evaluation", "max later",
                                                  "median", "close"], rows,
                 note="inline: W&B prepares and logs its row in the training thread, set up at the first evaluation "
                 "(before); threaded: set up at train begin, rows prepared in a worker thread and logged from the "
                 "training thread (now). MLflow logs in a background thread in both.")
    worst = max(results["threaded"]["held"])
    before = max(results["inline"]["held"])
    report.check("W&B + MLflow, training thread per evaluation", f"{worst:.3f} s at most (inline: {before:.3f} s)",
                 "< 0.5 s", worst < 0.5)
    report.extra = {"training_thread": results}


def main() -> None:
    ap = common.parser(__doc__, EXAMPLE)
    ap.add_argument("--decisions", type=int, default=10_000, help="decisions in the evaluation (default: 10000)")
    ap.add_argument("--repeats", type=int, default=5, help="median of this many (default: 5)")
    ap.add_argument("--backends", default="local,mlflow,wandb", help="comma-separated (default: local,mlflow,wandb)")
    ap.add_argument("--profile", action="store_true", help="print the top functions of the local backend's call")
    ap.add_argument("--training-thread", type=int, default=0, metavar="N",
                    help="instead: W&B + MLflow as the callback runs them, N evaluations (see above)")
    ap.add_argument("--train-gap", type=float, default=1.0, help="seconds of training between evaluations (default: 1)")
    ap.add_argument("--thread-case", choices=list(THREAD_CASES), help="(internal) one case of --training-thread")
    common.add_output_args(ap)
    a = ap.parse_args()
    if a.thread_case:
        import json

        print(json.dumps(training_thread_case(a.thread_case, a.decisions, a.training_thread, a.train_gap)))
        return
    if a.training_thread:
        report = common.Report("bench_logging", f"W&B + MLflow in the training thread, {a.decisions:,} decisions",
                               {"evaluations": a.training_thread, "train gap s": a.train_gap})
        report.start()
        training_thread(a, report)
        report.write(a.json)
        return

    from tokcal.core.per_sample import PerSample
    from tokcal.core.plots import figure_to_array, figure_to_png, metric_figures

    s = scores(a.decisions)
    metrics = s.metrics()
    record = PerSample.from_scores(s)
    record_bytes = len(record.to_json())
    report = common.Report("bench_logging", f"Logging one evaluation of {a.decisions:,} decisions", {
        "labels": "Accept, Reject", "repeats": a.repeats, "figures": ", ".join(metric_figures(metrics))})
    report.start()
    steps: dict[str, tuple[float, float]] = {}
    steps["metrics"] = repeat(lambda i: s.metrics(), a.repeats)
    steps["per-sample record (build + JSON)"] = repeat(lambda i: PerSample.from_scores(s).to_json(), a.repeats)
    steps["figures (PNG, local)"] = repeat(
        lambda i: [figure_to_png(f) for f in metric_figures(metrics, step=i).values()], a.repeats)
    steps["figures (arrays, MLflow/W&B)"] = repeat(
        lambda i: [figure_to_array(f) for f in metric_figures(metrics, step=i).values()], a.repeats)
    from tokcal.core.bootstrap import HEADLINE, confidence_intervals
    from tokcal.core.compare import compare_records

    small = PerSample.from_scores(scores(1000, seed=1))
    other = PerSample(record.labels, record.index, record.gt, record.probs ** 1.1)  # another model, same samples
    intervals = {
        f"intervals, all metrics, {a.decisions:,} decisions": repeat(lambda i: confidence_intervals(record), a.repeats),
        "intervals, all metrics, 1,000 decisions": repeat(lambda i: confidence_intervals(small), a.repeats),
        f"intervals, all but smooth ECE, {a.decisions:,} decisions": repeat(
            lambda i: confidence_intervals(record, metrics=[m for m in HEADLINE if m != "smece"]), a.repeats),
        f"paired comparison, all metrics, {a.decisions:,} decisions": repeat(
            lambda i: compare_records(record, other), a.repeats),
    }
    root = Path(tempfile.mkdtemp(dir=a.workdir if a.workdir.exists() else None, prefix="logging-"))
    calls: dict[str, tuple[float, float]] = {}
    bare: dict[str, tuple[float, float]] = {}  # the same call without the per-sample record
    failed: dict[str, str] = {}
    for name in [b.strip() for b in a.backends.split(",") if b.strip()]:
        try:
            tracker = open_backend(name, root)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:  # e.g. not installed: reported, the others run
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        calls[name] = repeat(lambda i, t=tracker: t.log_evaluation(metrics, 10 * (i + 1), per_sample=record),
                             a.repeats)
        bare[name] = repeat(lambda i, t=tracker: t.log_evaluation(metrics, 10 * (i + 1) + 5), a.repeats)
        if a.profile and name == "local":
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(tracker.log_evaluation, metrics, 9_999_990, per_sample=record)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        tracker.close()
    rows = [[k, w, c] for k, (w, c) in steps.items()]
    rows += [[k, w, c] for k, (w, c) in intervals.items()]
    rows += [[f"log_evaluation: {k}", w, c] for k, (w, c) in calls.items()]
    rows += [[f"log_evaluation: {k}, without the per-sample record", w, c] for k, (w, c) in bare.items()]
    rows += [[f"total: {k} (metrics + log_evaluation)", steps["metrics"][0] + w, steps["metrics"][1] + c]
             for k, (w, c) in calls.items()]
    rows += [[f"log_evaluation: {k}", "failed", v] for k, v in failed.items()]
    report.table("One evaluation (median)", ["step", "wall s", "CPU s"], rows,
                 note="log_evaluation draws the figures itself; W&B's CPU time leaves out its service process.")
    figs = max(steps["figures (PNG, local)"][0], steps["figures (arrays, MLflow/W&B)"][0])
    figs_cpu = max(steps["figures (PNG, local)"][1], steps["figures (arrays, MLflow/W&B)"][1])
    report.check("all figures of one evaluation", f"{figs:.3f} s (CPU {figs_cpu:.3f} s)", "< 0.5 s", figs < 0.5,
                 note="wall time; on a busy machine the CPU time is the steadier number")
    rec_wall, rec_cpu = steps["per-sample record (build + JSON)"]
    report.check(f"per-sample record of {a.decisions:,} decisions", f"{record_bytes / 1e3:.0f} KB, "
                 f"{rec_wall * 1e3:.0f} ms (CPU {rec_cpu * 1e3:.0f} ms)", "reported (#13)", None,
                 note="on by default; included in every log_evaluation above")
    for k, (w, c) in calls.items():
        total = steps["metrics"][0] + w
        report.check(f"whole evaluation, {k}", f"{total:.3f} s (CPU {steps['metrics'][1] + c:.3f} s)", "< 1 s",
                     total < 1.0, note="see the table for the step that dominates")
    for k, v in failed.items():
        report.check(f"whole evaluation, {k}", "not measured", "< 1 s", None, note=v)
    for k, (w, c) in calls.items():
        extra_wall, extra_cpu = w - bare[k][0], c - bare[k][1]
        report.check(f"per-sample record in {k}", f"{extra_wall * 1e3:+.0f} ms (CPU {extra_cpu * 1e3:+.0f} ms)",
                     "reported (#13)", None, note="log_evaluation with the record minus without it (medians; a few ms is within the noise)")
    iv_wall, iv_cpu = intervals[f"intervals, all metrics, {a.decisions:,} decisions"]
    report.check(f"intervals of {a.decisions:,} decisions (1,000 resamples)", f"{iv_wall:.3f} s (CPU {iv_cpu:.3f} s)",
                 "reported", None, note="computed by the report and tokcal compare from the per-sample record")
    report.extra = {"intervals": intervals, "steps": steps, "calls": calls, "bare": bare, "failed": failed, "per_sample_bytes": record_bytes}
    report.write(a.json)


if __name__ == "__main__":
    main()
