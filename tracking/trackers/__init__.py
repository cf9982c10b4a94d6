"""Trackers: where tokcal's numbers, histograms, diagrams and tables go.

Pick a backend by name: ``local`` (the default: a folder, no server), ``mlflow`` or
``wandb``. The same names work in code, in YAML (``tracker: {backend: mlflow, ...}``,
see :func:`open_tracker_from_config`) and on the command line (``--backend``, see
:func:`add_tracker_arguments`).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from tracking.core.metrics import compute_metrics
    >>> m = compute_metrics(np.array([[0.7, 0.2], [0.1, 0.8]]), np.array([0, 1]), ["Accept", "Reject"])
    >>> with open_tracker("local", local_dir=tempfile.mkdtemp()) as tracker:
    ...     tracker.log_evaluation(m, step=10)
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path
from typing import Any, Mapping

from tracking.errors import TokcalError
from tracking.trackers.base import BACKENDS, Tracker, redact, wandb_key
from tracking.trackers.local import DEFAULT_LOCAL_DIR, LocalTracker, read_local_store
from tracking.trackers.spool import SpoolingTracker, SyncResult, sync_spool

__all__ = [
    "BACKENDS",
    "DEFAULT_LOCAL_DIR",
    "LocalTracker",
    "SpoolingTracker",
    "SyncResult",
    "Tracker",
    "add_tracker_arguments",
    "open_tracker",
    "open_tracker_from_config",
    "read_local_store",
    "redact",
    "sync_spool",
    "tracker_kwargs_from_args",
    "wandb_key",
]

# Options that only one backend understands; passing them to another is a mistake.
_ONLY_FOR: dict[str, str] = {
    "tracking_uri": "mlflow",
    "experiment": "mlflow",
    "project": "wandb",
    "entity": "wandb",
    "wandb_mode": "wandb",
}


def check_backend(backend: Any) -> str:
    """Normalise and validate a backend name (``"MLflow"`` -> ``"mlflow"``)."""
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in BACKENDS:
        raise TokcalError(f"expected backend to be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return name


def open_tracker(
    backend: str = "local",
    *,
    run_id: str | None = None,
    project: str | None = None,
    entity: str | None = None,
    tracking_uri: str | None = None,
    local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR,
    run_name: str | None = None,
    experiment: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    spool: bool = True,
    wandb_mode: str | None = None,
) -> Tracker:
    """Open a run in ``backend``: a new one, the one already active, or ``run_id``.

    Args:
        backend: ``"local"``, ``"mlflow"`` or ``"wandb"``.
        run_id: attach to this existing run (backfill, sync).
        project, entity: W&B only.
        tracking_uri, experiment: MLflow only; MLflow's defaults when ``None``.
        local_dir: the local backend's folder (one sub-folder per run), and the parent of
            the default spool folder.
        run_name: display name of a new run.
        spool_dir: where failed remote calls are kept (default ``<local_dir>/spool``).
        spool: wrap remote backends in :class:`SpoolingTracker` (a failed call is spooled
            with one warning instead of raising). ``tokcal sync`` opens with ``False``.
        wandb_mode: ``"online"``/``"offline"``; ``None`` follows ``WANDB_MODE``.

    Example:
        >>> tracker = open_tracker("mlflow", tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
        >>> tracker = open_tracker("wandb", project="my-finetune", run_id="3x7kq2a1")  # doctest: +SKIP
    """
    name = check_backend(backend)
    given = {"tracking_uri": tracking_uri, "experiment": experiment, "project": project,
             "entity": entity, "wandb_mode": wandb_mode}
    for option, value in given.items():
        if value is not None and _ONLY_FOR[option] != name:
            raise TokcalError(
                f"{option} applies to the {_ONLY_FOR[option]} backend; expected it unset for backend "
                f"{name!r}, got {redact(str(value))!r}"
            )
    if name == "local":
        return LocalTracker(local_dir, run_id=run_id, run_name=run_name)
    if name == "mlflow":
        from tracking.trackers.mlflow import MlflowTracker

        inner: Tracker = MlflowTracker(
            run_id=run_id, tracking_uri=tracking_uri, experiment=experiment, run_name=run_name
        )
    else:
        from tracking.trackers.wandb import WandbTracker

        inner = WandbTracker(run_id=run_id, project=project, entity=entity, run_name=run_name, mode=wandb_mode)
    if not spool:
        return inner
    return SpoolingTracker(inner, spool_dir if spool_dir is not None else Path(local_dir) / "spool")


def open_tracker_from_config(config: Mapping[str, Any] | str | None) -> Tracker:
    """Open a tracker from a YAML/dict section, or from a bare backend name.

    Example:
        >>> import tempfile
        >>> open_tracker_from_config({"backend": "local", "local_dir": tempfile.mkdtemp()}).name
        'local'

    A YAML file would say::

        tracker:
          backend: mlflow          # or wandb, local
          tracking_uri: http://127.0.0.1:5000
          experiment: my-finetune
    """
    if config is None:
        return open_tracker()
    if isinstance(config, str):
        return open_tracker(config)
    if not isinstance(config, Mapping):
        raise TokcalError(f"expected the tracker settings to be a mapping or a backend name, got {type(config).__name__}")
    allowed = [p for p in inspect.signature(open_tracker).parameters]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise TokcalError(f"unknown tracker settings {unknown}; expected some of {allowed}")
    return open_tracker(**dict(config))


def add_tracker_arguments(parser: argparse.ArgumentParser, *, default_backend: str | None = "local") -> None:
    """Add ``--backend``, ``--run-id``, ``--project``, ``--entity``, ``--tracking-uri``,
    ``--experiment``, ``--local-dir`` and ``--run-name`` to a subcommand's parser."""
    group = parser.add_argument_group("tracker")
    group.add_argument("--backend", choices=BACKENDS, default=default_backend,
                       help=f"where to log (default: {default_backend or 'the one recorded with the data'})")
    group.add_argument("--run-id", help="attach to this existing run")
    group.add_argument("--project", help="W&B project")
    group.add_argument("--entity", help="W&B entity (user or team)")
    group.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's, e.g. sqlite:///mlflow.db)")
    group.add_argument("--experiment", help="MLflow experiment name for a new run")
    group.add_argument("--local-dir", default=DEFAULT_LOCAL_DIR, help=f"local backend folder (default: {DEFAULT_LOCAL_DIR})")
    group.add_argument("--run-name", help="name of a new run")


def tracker_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`open_tracker` keyword arguments from :func:`add_tracker_arguments`' options."""
    keys = ("backend", "run_id", "project", "entity", "tracking_uri", "experiment", "local_dir", "run_name")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
