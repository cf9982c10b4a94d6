"""``tokcal.json``: what the training callback records for backfill, sync and report.

Written by the callback at train begin into ``output_dir``: the trackers it opened (each
tracker's ``describe()``, credentials redacted) and the tracking settings (spec, options).
This module is its only reader and writer.

Folders inside the output folder (a local run's ``local_dir``, a ``spool_dir``) are
recorded relative to it, so a copied or moved output folder backfills into its own copy
of the store; :func:`read_state` gives them back as absolute paths (absolute ones from
older files are read as they are). A run whose server was down at train begin is recorded
with ``run_id: null`` and a ``pending`` id until ``tokcal sync`` creates it
(:func:`record_created_run`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_state(folder, [{"backend": "local", "run_id": "r1", "local_dir": str(folder / "tokcal" / "r1")}],
    ...                 TrackingSettings())
    >>> import json; json.loads((folder / STATE_FILE).read_text())["trackers"][0]["local_dir"]
    'tokcal/r1'
    >>> read_state(find_state([folder]))["trackers"][0]["local_dir"] == str(folder.resolve() / "tokcal" / "r1")
    True
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tokcal.jobs.settings import TrackingSettings

STATE_FILE = "tokcal.json"
_GLOB_CHARS = "*?["
PATH_KEYS = ("local_dir", "spool_dir")  # tracker fields that are folders
EVAL_SETS = "eval_sets"  # metric prefix -> identity of the eval set logged under it
TRAINING_ENDED = "training_ended_at"  # when the callback saw training end (seconds since the epoch)


def find_state(paths: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The ``tokcal.json`` in a given folder, or beside the checkpoints (their parent)."""
    seen: list[Path] = []
    for src in paths:
        p = Path(str(src))
        if any(c in str(src) for c in _GLOB_CHARS) and not p.exists():
            p = Path(glob.glob(str(src))[0]) if glob.glob(str(src)) else p.parent
        for cand in (p, p.parent):
            if cand not in seen:
                seen.append(cand)
    for folder in seen:
        if (folder / STATE_FILE).is_file():
            return folder / STATE_FILE
    return None


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``tokcal.json`` (``{"trackers": [...], <settings>}``), with the trackers'
    relative folders resolved against the file's folder."""
    from tokcal.config import load_json_object

    state = load_json_object(path)
    base = Path(path).resolve().parent
    trackers = state.get("trackers")
    if isinstance(trackers, list):
        state["trackers"] = [_resolved(t, base) if isinstance(t, dict) else t for t in trackers]
    return state


def settings_from_state(state: Mapping[str, Any] | None) -> TrackingSettings:
    """The tracking settings recorded in ``tokcal.json`` (defaults when there is none)."""
    if not state:
        return TrackingSettings()
    return TrackingSettings.from_dict({k: v for k, v in state.items()
                                       if k not in ("trackers", EVAL_SETS, TRAINING_ENDED)})


def write_state(output_dir: str | os.PathLike[str], trackers: Sequence[Mapping[str, Any]],
                settings: TrackingSettings, eval_sets: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``<output_dir>/tokcal.json`` atomically: the trackers' descriptions and the
    settings, every credential (a password in a URI, a token) shown as ``***``, folders
    inside ``output_dir`` relative to it, and the identity of each eval set logged so far
    (``eval_sets``: metric prefix -> :func:`~tokcal.core.identity.eval_set_identity`)."""
    from tokcal.io import write_json
    from tokcal.trackers.base import redact_all

    recorded = redact_all(settings.to_dict())
    base = Path(output_dir).resolve()
    described = [_relative(redact_all(dict(t)), base) for t in trackers]
    out: dict[str, Any] = {"trackers": described, **recorded}
    if eval_sets:
        out[EVAL_SETS] = {k: dict(v) for k, v in eval_sets.items()}
    return write_json(Path(output_dir) / STATE_FILE, out)


def record_eval_set(path: str | os.PathLike[str], prefix: str, identity: Mapping[str, Any]) -> bool:
    """Record the identity of the eval set logged under ``prefix`` (``eval_``, ``eval_<name>_``)
    in an existing ``tokcal.json``; ``False`` when it was recorded already, unchanged.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_state(folder, [], TrackingSettings())
        >>> record_eval_set(folder / STATE_FILE, "eval_", {"size": 3, "fingerprint": "ab"})
        True
        >>> recorded_eval_set(read_state(folder / STATE_FILE), "eval_")
        {'size': 3, 'fingerprint': 'ab'}
    """
    from tokcal.config import load_json_object
    from tokcal.io import write_json

    state = load_json_object(path)
    sets = state.get(EVAL_SETS)
    sets = dict(sets) if isinstance(sets, dict) else {}
    if sets.get(prefix) == dict(identity):
        return False
    sets[prefix] = dict(identity)
    state[EVAL_SETS] = sets
    write_json(path, state)
    return True


def recorded_eval_set(state: Mapping[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    """The identity recorded for the eval set under ``prefix`` (``None``: none recorded)."""
    sets = (state or {}).get(EVAL_SETS)
    found = sets.get(prefix) if isinstance(sets, dict) else None
    return dict(found) if isinstance(found, dict) else None


def record_training_end(path: str | os.PathLike[str], when: float | None = None) -> None:
    """Record in an existing ``tokcal.json`` that training has ended (``tokcal backfill --watch``
    stops when it sees this); a new training in the folder writes the file again without it.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_state(folder, [], TrackingSettings())
        >>> record_training_end(folder / STATE_FILE, when=1.5)
        >>> training_ended(read_state(folder / STATE_FILE))
        1.5
    """
    import time

    from tokcal.config import load_json_object
    from tokcal.io import write_json

    state = load_json_object(path)
    state[TRAINING_ENDED] = time.time() if when is None else float(when)
    write_json(path, state)


def training_ended(state: Mapping[str, Any] | None) -> float | None:
    """When the callback recorded training's end (``None``: not recorded, or still training)."""
    value = (state or {}).get(TRAINING_ENDED)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def spool_dirs(state: Mapping[str, Any] | None) -> list[Path]:
    """The spool folders that the recorded trackers use (from :func:`read_state`)."""
    out: list[Path] = []
    for t in (state or {}).get("trackers") or []:
        if isinstance(t, dict) and t.get("spool_dir") and Path(t["spool_dir"]) not in out:
            out.append(Path(t["spool_dir"]))
    return out


def created_runs(state: Mapping[str, Any] | None) -> dict[str, str]:
    """Pending id -> run id of the runs ``tokcal sync`` created (:func:`record_created_run`)."""
    return {t["created_for"]: t["run_id"] for t in (state or {}).get("trackers") or []
            if isinstance(t, dict) and t.get("created_for") and t.get("run_id")}


def record_created_run(path: str | os.PathLike[str], pending: str, described: Mapping[str, Any]) -> bool:
    """Put the id of a run that ``tokcal sync`` created into the ``tokcal.json`` entry
    that waited for it (``pending``); ``False`` when no entry has that pending id."""
    from tokcal.config import load_json_object
    from tokcal.io import write_json
    from tokcal.trackers.base import redact_all

    state = load_json_object(path)
    base = Path(path).resolve().parent
    changed = False
    for t in state.get("trackers") or []:
        if isinstance(t, dict) and t.get("pending") == pending:
            keep = {k: t[k] for k in ("spool_dir",) if k in t}
            t.clear()
            t.update(_relative(redact_all(dict(described)), base))
            t.update(keep)
            t["created_for"] = pending  # entries a still-running training spools later carry this id
            changed = True
    if changed:
        write_json(path, state)
    return changed


def _relative(tracker: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(tracker)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and Path(value).is_absolute():
            try:
                out[key] = Path(value).resolve().relative_to(base).as_posix()
            except ValueError:  # outside the output folder: kept absolute
                pass
    return out


def _resolved(tracker: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(tracker)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            out[key] = str(base / value)
    return out
