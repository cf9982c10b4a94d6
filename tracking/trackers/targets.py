"""Which run(s) to reopen from what ``tokcal.json`` recorded, and opening them.

Each backend says how its recorded description is reopened
(:meth:`~tokcal.trackers.base.Tracker.reopen_kwargs`); this module only picks the
entries and applies the command line's flags.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tokcal.errors import TokcalError
from tokcal.trackers.base import backend_class, check_backend


def tracker_targets(
    state: Mapping[str, Any] | None,
    *,
    backend: str | None = None,
    run_id: str | None = None,
    local_dir: str | None = None,
    default_local_dir: str | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """``open_tracker`` keyword arguments for the run(s) to backfill into.

    The runs recorded in ``tokcal.json`` (``state["trackers"]``), narrowed to ``backend``
    when given; each flag that is given (``run_id``, ``local_dir``, a backend's options
    such as ``tracking_uri``, ``project``, ``entity``) overrides the recorded value.

    Example:
        >>> tracker_targets({"trackers": [{"backend": "local", "run_id": "r1", "local_dir": "/o/tokcal/r1"}]})
        [{'backend': 'local', 'run_id': 'r1', 'local_dir': '/o/tokcal'}]

    Raises:
        TokcalError: no run can be told (no ``tokcal.json`` and no ``--backend``/``--run-id``),
            or a recorded MLflow URI had its password redacted and none is given.
    """
    recorded = [t for t in (state or {}).get("trackers", []) if isinstance(t, dict) and t.get("backend")]
    if backend is not None:
        backend = check_backend(backend)
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
    overrides = {"run_id": run_id, "local_dir": local_dir, **options}
    out = []
    for t in entries:
        name = t["backend"]
        kw = backend_class(name).reopen_kwargs(t, overrides, where="tokcal.json", default_local_dir=default_local_dir)
        if not kw.get("run_id") and t.get("pending"):
            raise TokcalError(f"the {name} run was not created yet (its server was down when training began); "
                              "expected 'tokcal sync OUTPUT_DIR' first, which creates it, or --run-id")
        if not kw.get("run_id"):
            raise TokcalError(f"no {name} run id recorded; expected --run-id (see docs/backfill.md to find it)")
        out.append({"backend": name, **kw})
    return out


def open_targets(targets: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Open each run without a spool (a failed call is a failed checkpoint, not a file)."""
    from tokcal.trackers import open_tracker

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
