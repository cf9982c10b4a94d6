"""Sync: replay what a training run (or a backfill) could not send to its tracker.

``tokcal sync PATH`` takes a spool folder or a training output folder. For an output
folder it replays every spool there: the callback's ``<output_dir>/tokcal/spool``, the
other known names, and the ``spool_dir`` of each run that ``tokcal.json`` records. A run
whose server was down at train begin is created first, and its id goes into
``tokcal.json`` so that ``tokcal backfill`` and ``tokcal report`` find it.

Example:
    >>> result = sync_output("out", tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
    >>> result.created, result.replayed  # doctest: +SKIP
    ({'5f1c...': {'backend': 'mlflow', 'run_id': '0a9e...', ...}}, 7)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokcal.jobs.state import STATE_FILE, created_runs, read_state, record_created_run, spool_dirs
from tokcal.trackers.spool import SyncResult, find_spool_dirs, read_spool, sync_spool


def state_for(path: str | os.PathLike[str]) -> Path | None:
    """The ``tokcal.json`` of an output folder, or of the output folder a spool folder
    sits in (``out/tokcal/spool`` -> ``out/tokcal.json``)."""
    p = Path(path).resolve()
    for folder in (p, p.parent, p.parent.parent):
        if (folder / STATE_FILE).is_file():
            return folder / STATE_FILE
    return None


def output_spool_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Every spool folder for ``path`` (see the module docstring)."""
    state_file = state_for(path)
    recorded = spool_dirs(read_state(state_file)) if state_file else []
    return find_spool_dirs(path, recorded)


def pending_entries(path: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """The entries that a sync of ``path`` would replay, unreadable ones left in place."""
    return [e for d in output_spool_dirs(path) for e in read_spool(d, move_bad=False)]


def sync_output(path: str | os.PathLike[str], *, backend: str | None = None, run_id: str | None = None,
                **options: Any) -> SyncResult:
    """Replay every spool of ``path`` (:func:`~tokcal.trackers.spool.sync_spool`) and
    record the runs it created in ``tokcal.json``."""
    state_file = state_for(path)

    def created(pending: str, described: dict[str, Any]) -> None:
        if state_file is not None:
            record_created_run(state_file, pending, described)

    known = created_runs(read_state(state_file)) if state_file else {}
    return sync_spool(output_spool_dirs(path), backend=backend, run_id=run_id, on_created=created,
                      created=known, **options)
