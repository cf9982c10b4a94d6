"""``tokcal sync``: replay evaluations that could not reach the tracker into their run."""

from __future__ import annotations

import argparse
from typing import Any

from tracking.errors import TokcalError
from tracking.trackers.base import backend_class, backend_names
from tracking.trackers.spool import find_spool_dir, read_spool, sync_spool

EPILOG = """\
example:
  # the MLflow server was down during training; it is back:
  tokcal sync tokcal-runs/spool
  # an output folder works too, and the target run can be given explicitly:
  tokcal sync out/ --backend mlflow --run-id 0f3c... --tracking-uri http://127.0.0.1:5000

Points the run already has at a step are not logged again, and each spooled file is
deleted only after it was replayed, so running sync twice is safe.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="replay spooled evaluations into their run",
        description="Replay evaluations that failed to reach W&B or MLflow (kept in the spool folder) "
        "into their run, without doubling any (metric, step) point.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="SPOOL_DIR_OR_OUTPUT_DIR",
                        help="the spool folder, or an output folder that holds one (tokcal-spool/, spool/)")
    parser.add_argument("--backend", choices=backend_names(),
                        help="replay into this backend instead of the recorded one")
    parser.add_argument("--run-id", help="replay into this run instead of the recorded one")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (needed when the recorded one held a password)")
    parser.add_argument("--project", help="W&B project")
    parser.add_argument("--entity", help="W&B entity")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed and stop")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spool_dir = find_spool_dir(args.path)
    entries = read_spool(spool_dir)
    if not entries:
        print(f"nothing to sync in {spool_dir}")
        return 0
    if args.dry_run:
        for file, entry in entries:
            target = entry["target"]
            print(f"{file.name}: {entry['kind']} at step {entry['step']} -> {target.get('backend')} run "
                  f"{target.get('run_id')} ({_location(target)})")
        return 0
    result = sync_spool(
        spool_dir, backend=args.backend, run_id=args.run_id, tracking_uri=args.tracking_uri,
        project=args.project, entity=args.entity,
    )
    runs = ", ".join(f"{t['backend']} run {t['run_id']}" for t in result.targets)
    print(f"replayed {result.replayed} entries ({result.points} points) into {runs}; "
          f"{result.skipped} were already there; {result.remaining} left in {spool_dir}")
    return 0 if result.remaining == 0 else 1


def _location(target: dict[str, Any]) -> str:
    """Where a spooled entry's run lives, as its backend says (redacted)."""
    try:
        return backend_class(target.get("backend")).location(target)
    except TokcalError:  # a backend this tokcal does not know: say so in the listing
        return f"unknown backend {target.get('backend')!r}"
