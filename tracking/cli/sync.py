"""``tokcal sync``: replay evaluations that could not reach the tracker into their run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tokcal.errors import TokcalError
from tokcal.trackers.base import backend_class, backend_names

EPILOG = """\
example:
  # the MLflow server was down during training; it is back:
  tokcal sync out/                  # the training output folder (its tokcal/spool)
  tokcal sync tokcal-runs/spool     # or a spool folder
  # the target run can be given explicitly:
  tokcal sync out/ --backend mlflow --run-id 0f3c... --tracking-uri http://127.0.0.1:5000

A run whose server was down when training began is created first (its id goes into
out/tokcal.json). Points the run already has at a step are not logged again, and each
spooled file is deleted only after it was replayed, so running sync twice is safe. An
entry that cannot be replayed (cut off, not JSON, a field of the wrong type) is moved
aside (*.spool.json.bad, named with the reason) and the others are replayed; the exit
status is then 1.
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
                        help="the spool folder, or a training output folder (its tokcal/spool and the spool "
                        "folders its tokcal.json records)")
    parser.add_argument("--backend", choices=backend_names(),
                        help="replay into this backend instead of the recorded one")
    parser.add_argument("--run-id", help="replay into this run instead of the recorded one")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (needed when the recorded one held a password)")
    parser.add_argument("--project", help="W&B project")
    parser.add_argument("--entity", help="W&B entity")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed and stop")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokcal.jobs.sync import output_spool_dirs, pending_entries, sync_output

    where = ", ".join(str(d) for d in output_spool_dirs(args.path))
    entries = pending_entries(args.path)
    if args.dry_run:
        for file, entry in entries:
            target = entry["target"]
            run = target.get("run_id") or "(to be created)"
            print(f"{file.name}: {entry['kind']} at step {entry['step']} -> {target.get('backend')} run "
                  f"{run} ({_location(target)})")
        if not entries:
            print(f"nothing to sync in {where}")
        return 0
    result = sync_output(
        args.path, backend=args.backend, run_id=args.run_id, tracking_uri=args.tracking_uri,
        project=args.project, entity=args.entity,
    )
    for bad in result.set_aside:
        why = result.reasons.get(bad, "is unreadable")
        print(f"tokcal sync: {bad} {why}; moved aside, not replayed", file=sys.stderr)
    if not entries and not result.set_aside:
        print(f"nothing to sync in {where}")
        return 0
    for pending, described in result.created.items():
        print(f"created {described.get('backend')} run {described.get('run_id')} (the server was down when "
              "training began)")
    runs = ", ".join(f"{t['backend']} run {t['run_id']}" for t in result.targets) or "no run"
    print(f"replayed {result.replayed} entries ({result.points} points) into {runs}; "
          f"{result.skipped} were already there; {result.remaining} left in {where}")
    return 0 if result.remaining == 0 and not result.set_aside else 1


def _location(target: dict[str, Any]) -> str:
    """Where a spooled entry's run lives, as its backend says (redacted)."""
    try:
        return backend_class(target.get("backend")).location(target)
    except TokcalError:  # a backend this tokcal does not know: say so in the listing
        return f"unknown backend {target.get('backend')!r}"
