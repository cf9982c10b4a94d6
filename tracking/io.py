"""Writing results so that a crash never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write a whole file or nothing: a temporary file beside ``path``, fsync, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def to_jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths and sets become plain JSON types; NaN becomes None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_json(obj: Any, **kw: Any) -> str:
    """JSON with NaN written as null (valid JSON for every reader)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kw)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    return write_atomic(path, "".join(to_json(r) + "\n" for r in records).encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, (to_json(obj, indent=2) + "\n").encode("utf-8"))
