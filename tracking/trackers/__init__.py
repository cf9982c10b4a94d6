"""Trackers: where tokcal's numbers, histograms, diagrams and tables go.

Pick a backend by name: ``local`` (the default: a folder, no server), ``mlflow`` or
``wandb``. The same names work in code (:func:`open_tracker`), in the tracking settings
(``tracking: {backend: mlflow}`` in YAML) and on the command line (``--backend``). Each
backend is one module here, its class registered by name in
:mod:`tokcal.trackers.base` (see docs/trackers.md, "Adding a backend").

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from tokcal.core.metrics import compute_metrics
    >>> m = compute_metrics(np.array([[0.7, 0.2], [0.1, 0.8]]), np.array([0, 1]), ["Accept", "Reject"])
    >>> with open_tracker("local", local_dir=tempfile.mkdtemp()) as tracker:
    ...     tracker.log_evaluation(m, step=10)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokcal.errors import TokcalError
from tokcal.trackers.base import (
    DEFAULT_BACKEND,
    DEFAULT_LOCAL_DIR,
    Tracker,
    TrackerUnreachable,
    backend_class,
    backend_names,
    check_backend,
    option_owner,
    redact,
    register_backend,
    unregister_backend,
)
from tokcal.trackers.local import LocalTracker, read_local_store
from tokcal.trackers.spool import SpoolingTracker, SyncResult, sync_spool

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_LOCAL_DIR",
    "LocalTracker",
    "SpoolingTracker",
    "SyncResult",
    "Tracker",
    "TrackerUnreachable",
    "backend_class",
    "backend_names",
    "check_backend",
    "open_tracker",
    "read_local_store",
    "redact",
    "register_backend",
    "sync_spool",
    "unregister_backend",
]


def open_tracker(
    backend: str = DEFAULT_BACKEND,
    *,
    run_id: str | None = None,
    local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR,
    run_name: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    spool: bool = True,
    **options: Any,
) -> Tracker:
    """Open a run in ``backend``: a new one, the one already active, or ``run_id``.

    Args:
        backend: a registered backend's name: ``"local"``, ``"mlflow"`` or ``"wandb"``.
        run_id: attach to this existing run (backfill, sync).
        local_dir: the local backend's folder (one sub-folder per run), and the parent of
            the default spool folder.
        run_name: display name of a new run.
        spool_dir: where failed remote calls are kept (default ``<local_dir>/spool``).
        spool: wrap remote backends in :class:`SpoolingTracker` (a failed call is spooled
            with one warning instead of raising; a server that does not answer when the
            run is opened gives a tracker that spools the run's creation and every call,
            for ``tokcal sync``). ``tokcal sync`` and ``tokcal backfill`` open with ``False``.
        **options: the backend's own options (``None`` means unset): MLflow
            ``tracking_uri``, ``experiment`` (MLflow's defaults when unset); W&B
            ``project``, ``entity``, ``wandb_mode`` (``"online"``/``"offline"``; unset
            follows ``WANDB_MODE``).

    Raises:
        TokcalError: an unknown backend, an unknown option, or another backend's option.

    Example:
        >>> tracker = open_tracker("mlflow", tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
        >>> tracker = open_tracker("wandb", project="my-finetune", run_id="3x7kq2a1")  # doctest: +SKIP
    """
    cls = backend_class(backend)
    owners = {option: cls.name if option in cls.options else option_owner(option) for option in options}
    unknown = sorted(o for o, owner in owners.items() if owner is None)
    if unknown:
        known = sorted({"run_id", "local_dir", "run_name", "spool_dir", "spool"}
                       | {o for n in backend_names() for o in backend_class(n).options})
        raise TokcalError(f"unknown tracker settings {unknown}; expected some of {known}")
    for option, value in options.items():
        if value is not None and option not in cls.options:
            raise TokcalError(
                f"{option} applies to the {owners[option]} backend; expected it unset for backend {cls.name!r}, "
                f"got {redact(str(value))!r}"
            )
    given = {o: v for o, v in options.items() if v is not None}
    spool_to = spool_dir if spool_dir is not None else Path(local_dir) / "spool"
    try:
        tracker = cls.open(run_id=run_id, run_name=run_name, local_dir=local_dir, **given)
    except TrackerUnreachable as exc:
        if not (spool and cls.remote):
            raise
        return SpoolingTracker.unopened(cls, exc, spool_to, run_id=run_id, run_name=run_name, options=given)
    if not (spool and cls.remote):
        return tracker
    return SpoolingTracker(tracker, spool_to)
