"""``tokcal.json``: what the training callback records for backfill, sync and report.

Written by the callback at train begin into ``output_dir``: the trackers it opened (each
tracker's ``describe()``, credentials redacted) and the tracking settings (spec, options).
This module is its only reader and writer.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_state(folder, [{"backend": "local", "run_id": "r1"}], TrackingSettings())
    >>> read_state(find_state([folder]))["trackers"][0]["run_id"]
    'r1'
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tracking.jobs.settings import TrackingSettings

STATE_FILE = "tokcal.json"
_GLOB_CHARS = "*?["


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
    """Read a ``tokcal.json`` (``{"trackers": [...], <settings>}``)."""
    from tracking.config import load_json_object

    return load_json_object(path)


def settings_from_state(state: Mapping[str, Any] | None) -> TrackingSettings:
    """The tracking settings recorded in ``tokcal.json`` (defaults when there is none)."""
    if not state:
        return TrackingSettings()
    return TrackingSettings.from_dict({k: v for k, v in state.items() if k != "trackers"})


def write_state(output_dir: str | os.PathLike[str], trackers: Sequence[Mapping[str, Any]],
                settings: TrackingSettings) -> Path:
    """Write ``<output_dir>/tokcal.json`` atomically: the trackers' descriptions and the
    settings, every credential (a password in a URI, a token) shown as ``***``."""
    from tracking.io import write_json
    from tracking.trackers.base import redact

    recorded = settings.to_dict()
    if recorded.get("tracking_uri"):
        recorded["tracking_uri"] = redact(recorded["tracking_uri"])
    described = [{k: redact(v) if isinstance(v, str) else v for k, v in t.items()} for t in trackers]
    return write_json(Path(output_dir) / STATE_FILE, {"trackers": described, **recorded})
