"""``tokcal backfill``: rescore saved checkpoints and log them into the run at their steps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tokcal.cli.common import (
    add_data_args,
    add_engine_args,
    add_model_args,
    add_spec_args,
    engine_kwargs,
    format_table,
    load_kwargs,
    quiet_output,
    source_from,
    spec_from,
)
from tokcal.errors import TokcalError
from tokcal.trackers.base import backend_names

if TYPE_CHECKING:
    from tokcal.core.distributed import Dist
    from tokcal.jobs.settings import TrackingSettings

EXAMPLE = r"""examples:
  # the run and the spec come from out/tokcal.json (written by the training callback)
  tokcal backfill out --data eval.jsonl

  # a W&B run trained without tokcal: its id is the last part of the run page URL
  tokcal backfill out --data eval.jsonl --backend wandb --project my-ft --run-id 3x7kq2a1

  # an MLflow run (FINISHED is fine), two checkpoints picked by a glob, files elsewhere
  tokcal backfill 'out/checkpoint-[12]000' --data eval.jsonl --backend mlflow \
      --tracking-uri http://127.0.0.1:5000 --run-id 4f0c2b... --output-dir rescored/

  # a second eval set, logged beside the first as its own series (eval_heldout_*)
  tokcal backfill out --data heldout.jsonl --metric-prefix eval_heldout_

  # a LLaMA-Factory run: the eval set built by LLaMA-Factory from the training YAML
  tokcal backfill out --llamafactory-config train.yaml

  # several GPUs: each rank scores a share, rank 0 logs
  torchrun --nproc_per_node 4 -m tokcal.cli.main backfill out --data eval.jsonl

  # with vLLM (it spreads the work over the GPUs itself; no torchrun), and the model's own
  # answers beside the teacher-forced scores (gen_ metrics)
  tokcal backfill out --data eval.jsonl --engine vllm --vllm-arg tensor_parallel_size=4 --mode generate

  # training with evaluation off: score each checkpoint as soon as it is saved, on a spare GPU,
  # into the training's own run; stops by itself when training ends
  tokcal backfill out --data eval.jsonl --watch --device cuda:7

Steps the run already has are skipped (--force logs them again), so running it twice adds
nothing and an interrupted backfill goes on where it stopped.

One series, one eval set: out/tokcal.json records which eval set was logged under each
prefix (the training callback records its own). Data that is not that eval set is refused
before any model loads; give it its own --metric-prefix. A new prefix's eval set is
recorded when its first step is logged.

Checkpoint folders are only read. The per-decision files (one JSON line per decision, as
`tokcal extract` writes) go to out/tokcal/backfill/checkpoint-N.decisions.jsonl, or to
--output-dir. An MLflow store that does not exist is an error, never created.

Exit status 1 when any checkpoint failed (the others are still logged), 2 for an error
before scoring, 130 when a watch is stopped with Ctrl-C (run it again to go on).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill",
        help="rescore saved checkpoints and log them into the training run at their steps",
        description="Score each checkpoint-N folder on an eval set and log the decision metrics, histograms, "
        "reliability diagram and bins into the same W&B, MLflow or local run at step N.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="the training output folder (its checkpoint-N folders), checkpoint folders or globs")
    p.add_argument("--output-dir", metavar="DIR",
                   help="write the per-decision files (<checkpoint>.decisions.jsonl) here (default: tokcal/backfill/ "
                        "in the folder that holds the checkpoints; checkpoint folders are never written)")
    p.add_argument("--force", action="store_true", help="log steps that the run already has again")
    p.add_argument("--state", metavar="tokcal.json", help="read the run and spec from this file "
                   "(default: tokcal.json in PATH or beside the checkpoints)")
    p.add_argument("--metric-prefix", default="eval_",
                   help="metric name prefix, as the Trainer logs it (default: eval_); another eval set needs its "
                        "own, e.g. eval_heldout_")
    p.add_argument("--metrics", nargs="+", metavar="NAME",
                   help="metrics to chart in MLflow / W&B: 'default' (the headline set), 'all', or names such "
                        "as decision_ece avg_p_accept (default: as recorded in tokcal.json); every metric stays "
                        "in each evaluation's stored record")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors and the one-line result: no progress bars, no messages from "
                        "the model libraries")
    w = p.add_argument_group("watching a training that is still running")
    w.add_argument("--watch", action="store_true",
                   help="after the checkpoints that are there, wait for new ones and score each as soon as its save "
                   "is complete; stops when training ends (PATH: the training's output folder)")
    w.add_argument("--until-step", type=int, metavar="N", help="with --watch: stop after the checkpoint of step N")
    w.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="with --watch: stop when no new checkpoint appeared for this long (default: wait until "
                   "training ends)")
    w.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                   help="with --watch: seconds between two looks at the folder (default: 2)")
    g = p.add_argument_group("run (default: the one recorded in tokcal.json)")
    g.add_argument("--backend", choices=backend_names(), help="log into this backend's run only")
    g.add_argument("--run-id", help="the run to log into (W&B: the id in the run URL; MLflow: the run ID)")
    g.add_argument("--project", help="W&B project")
    g.add_argument("--entity", help="W&B entity (user or team)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: the recorded one, else "
                   "MLFLOW_TRACKING_URI, else MLflow's default, mlflow.db in the current folder)")
    g.add_argument("--local-dir", help="local backend folder (the one holding run folders)")
    add_data_args(p)
    add_spec_args(p)
    add_model_args(p)
    add_engine_args(p)
    p.set_defaults(func=run, bins=None)


def run(args: argparse.Namespace) -> int:
    with quiet_output(args.quiet):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tokcal.core.distributed import Dist, destroy_distributed, init_distributed
    from tokcal.jobs.backfill import backfill
    from tokcal.jobs.state import find_state, read_state

    source = source_from(args)
    if args.watch:
        from tokcal.cli.backfill_watch import run_watch

        return run_watch(args, source, settings_for=_settings, open_runs=_open_runs)
    from tokcal.cli.backfill_watch import check_watch_flags

    check_watch_flags(args)
    created = init_distributed()
    dist = Dist()
    state_file = Path(args.state) if args.state else find_state(args.paths)
    state = read_state(state_file) if state_file else None
    settings = _settings(args, state)
    kw = load_kwargs(args)
    scoring = engine_kwargs(args)
    if dist.on and kw["device"] is None:
        kw["device"] = _local_cuda_device()
    trackers = _open_runs(args, state, state_file, dist)
    # The eval sets that tokcal.json records are those of its own runs.
    recorded_runs = {t.get("run_id") for t in (state or {}).get("trackers") or [] if isinstance(t, dict)}
    same_runs = dist.broadcast(bool(trackers) and all(t.run_id in recorded_runs for t in trackers))
    try:
        report = backfill(
            args.paths, source, trackers, settings, force=args.force,
            output_dir=args.output_dir, metric_prefix=args.metric_prefix, max_tokens=args.max_tokens,
            progress=not args.quiet, state=state_file if same_runs else None, **scoring, **kw,
        )
    finally:
        for t in trackers:
            t.close()
    if dist.main:
        print(report.summary(brief=args.quiet))
        if len(report.logged) == 1 and not args.quiet:
            print(format_table(report.logged[0].scalars))
    if created:
        destroy_distributed()  # a rank exiting with the group alive can abort in gloo's threads
    if report.failed:
        print(f"tokcal backfill: {len(report.failed)} checkpoint(s) failed; fix them and run again "
              "(logged steps are skipped)", file=sys.stderr)
        return 1
    return 0


def _settings(args: argparse.Namespace, state: dict | None) -> "TrackingSettings":
    """The settings recorded in tokcal.json, with the spec and bins flags on top."""
    from tokcal.core.metrics import bin_edges
    from tokcal.jobs.state import settings_from_state

    settings = settings_from_state(state)
    changes: dict = {"spec": spec_from(args, settings.spec)}
    if args.bins is not None:
        bin_edges(args.bins)
        changes["n_bins"] = args.bins
    if args.metrics:
        changes["metrics"] = args.metrics[0] if args.metrics in (["all"], ["default"]) else tuple(args.metrics)
    return settings.replace(**changes)


def _open_runs(args: argparse.Namespace, state: dict | None, state_file: Path | None, dist: "Dist") -> list:
    """Find and open the run(s) on rank 0 before anything is scored; every rank stops on an error."""
    from tokcal.trackers.targets import open_targets, tracker_targets

    trackers, error = [], None
    if dist.main:
        try:
            targets = tracker_targets(
                state, backend=args.backend, run_id=args.run_id, project=args.project, entity=args.entity,
                tracking_uri=args.tracking_uri, local_dir=args.local_dir,
                default_local_dir=str(state_file.parent / "tokcal") if state_file else None,
            )
            trackers = open_targets(targets)
        except TokcalError as exc:
            error = str(exc)
    error = dist.broadcast(error)
    if error:
        raise TokcalError(error)
    return trackers


def _local_cuda_device() -> str | None:
    """``cuda:<LOCAL_RANK>`` under torchrun on a GPU machine, else the default."""
    import os

    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else None
