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


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file (a UTF-8 byte-order mark is fine), or a one-line error.

    Raises:
        TokcalError: missing, a folder, unreadable, or not UTF-8 (the message says how to
            re-encode it).
    """
    from tracking.errors import TokcalError

    p = Path(path)
    if not p.exists():
        raise TokcalError(f"{what} not found: {p}")
    if p.is_dir():
        raise TokcalError(f"expected {what} to be a file, got a folder: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TokcalError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TokcalError(f"{what} {p} is UTF-16; expected UTF-8: re-encode it, e.g. iconv -f UTF-16 -t UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TokcalError(
            f"{what} {p} is not UTF-8 (byte {exc.start} is 0x{data[exc.start]:02x}); expected UTF-8: "
            "re-encode it, e.g. iconv -f LATIN1 -t UTF-8"
        ) from exc


def check_outputs(outputs: dict[str, str | Path | None], inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before any work, output paths that would overwrite an input or each other,
    that are folders, or whose folder cannot be created or written.

    Args:
        outputs: option name -> path (``None`` entries are ignored), e.g. ``{"--output": ...}``.
        inputs: the paths the command reads.

    Raises:
        TokcalError: naming the option and what to do.

    Example:
        >>> check_outputs({"--output": "data.jsonl"}, ["data.jsonl"])
        Traceback (most recent call last):
        ...
        tracking.errors.TokcalError: --output data.jsonl is also an input; expected a new file name
    """
    from tracking.errors import TokcalError

    given = {k: Path(v) for k, v in outputs.items() if v is not None}
    read = [Path(p) for p in inputs if p is not None]
    seen: dict[Path, str] = {}
    for option, p in given.items():
        resolved = p.resolve()
        if p.is_dir():
            raise TokcalError(f"{option} {p} is a folder; expected a file path")
        if any(resolved == q.resolve() for q in read):
            raise TokcalError(f"{option} {p} is also an input; expected a new file name")
        if resolved in seen:
            raise TokcalError(f"{option} and {seen[resolved]} are the same file {p}; expected two file names")
        seen[resolved] = option
        check_writable_dir(p.parent, option)


def check_writable_dir(folder: str | Path, option: str = "output folder") -> None:
    """The folder exists and is writable, or its nearest existing parent is (it can be made)."""
    from tracking.errors import TokcalError

    p = Path(folder).resolve()
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TokcalError(f"{option}: {existing} is a file, so {p} cannot be a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TokcalError(f"{option}: cannot write into {existing} (permission denied); choose a writable place")
