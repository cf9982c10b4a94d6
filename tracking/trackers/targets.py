"""Which run(s) to reopen from what ``tokcal.json`` recorded, and opening them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from tracking.errors import TokcalError


def tracker_targets(
    state: Mapping[str, Any] | None,
    *,
    backend: str | None = None,
    run_id: str | None = None,
    project: str | None = None,
    entity: str | None = None,
    tracking_uri: str | None = None,
    local_dir: str | None = None,
    default_local_dir: str | None = None,
) -> list[dict[str, Any]]:
    """``open_tracker`` keyword arguments for the run(s) to backfill into.

    The runs recorded in ``tokcal.json`` (``state["trackers"]``), narrowed to ``backend``
    when given; each flag that is given overrides the recorded value.

    Raises:
        TokcalError: no run can be told (no ``tokcal.json`` and no ``--backend``/``--run-id``),
            or a recorded MLflow URI had its password redacted and none is given.
    """
    recorded = [t for t in (state or {}).get("trackers", []) if isinstance(t, dict) and t.get("backend")]
    if backend is not None:
        entries = [t for t in recorded if t["backend"] == backend] or [{"backend": backend}]
    elif recorded:
        entries = recorded
    else:
        raise TokcalError(
            "no run to backfill into: expected a tokcal.json (written by the training callback) beside the "
            "checkpoints, or --backend and --run-id"
        )
    if run_id is not None and len(entries) > 1:
        names = ", ".join(t["backend"] for t in entries)
        raise TokcalError(f"--run-id names one run but tokcal.json records several ({names}); pass --backend too")
    out = []
    for t in entries:
        name = t["backend"]
        kw: dict[str, Any] = {"backend": name, "run_id": run_id or t.get("run_id")}
        if not kw["run_id"]:
            raise TokcalError(f"no {name} run id recorded; expected --run-id (see docs/backfill.md to find it)")
        if name == "mlflow":
            uri = tracking_uri or t.get("tracking_uri")
            if uri and "***" in uri and not tracking_uri:
                env = os.environ.get("MLFLOW_TRACKING_URI")
                if not env:
                    raise TokcalError(
                        f"tokcal.json records the MLflow URI with its password hidden ({uri}); expected "
                        "--tracking-uri or MLFLOW_TRACKING_URI to give it"
                    )
                uri = env
            kw["tracking_uri"] = uri
        elif name == "wandb":
            kw["project"] = project or t.get("project")
            kw["entity"] = entity or t.get("entity")
        else:
            recorded_dir = Path(t["local_dir"]).parent if t.get("local_dir") else None
            kw["local_dir"] = local_dir or recorded_dir or default_local_dir or "tokcal-runs"
        out.append(kw)
    return out


def open_targets(targets: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Open each run without a spool (a failed call is a failed checkpoint, not a file)."""
    from tracking.trackers import open_tracker

    opened: list[Any] = []
    try:
        for kw in targets:
            kw = {k: v for k, v in kw.items() if v is not None}
            opened.append(open_tracker(spool=False, **kw))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened
