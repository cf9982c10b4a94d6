"""Writing results so that a crash never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def to_json(obj: Any, **kw: Any) -> str:
    """JSON with NaN written as null (valid JSON for every reader)."""
    return json.dumps(_clean(obj), allow_nan=False, **kw)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(to_json(r) + "\n" for r in records))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj, indent=2) + "\n")
