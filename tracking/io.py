"""Files and the process environment: atomic writes, JSON, one-writer locks, and
environment variables set for one block.

Example:
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_atomic(folder / "a.json", b"{}")
    >>> oct((folder / "a.json").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    True
    >>> with env_vars({"TOKCAL_EXAMPLE": "1"}):
    ...     os.environ["TOKCAL_EXAMPLE"]
    '1'
    >>> "TOKCAL_EXAMPLE" in os.environ
    False
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np

_ENV_LOCK = threading.Lock()
_UMASK_LOCK = threading.Lock()


@contextmanager
def env_vars(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set environment variables for the block (``None`` unsets one), then put back what
    was there. The only place tokcal changes ``os.environ``.

    Blocks may overlap in several threads: each variable keeps a stack of the values the
    open blocks set, the latest open block's value is in force, and when the last block
    for a variable ends the value from before the first one is back, whatever the order
    in which they end.

    Example:
        >>> with env_vars({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}):
        ...     os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        '1'
    """
    token = object()
    with _ENV_LOCK:
        for k, v in values.items():
            stack = _ENV_STACKS.setdefault(k, [])
            if not stack:
                _ENV_BEFORE[k] = os.environ.get(k)
            stack.append((token, None if v is None else str(v)))
            _set_env(k, stack[-1][1])
    try:
        yield
    finally:
        with _ENV_LOCK:
            for k in values:
                stack = [entry for entry in _ENV_STACKS[k] if entry[0] is not token]
                _ENV_STACKS[k] = stack
                _set_env(k, stack[-1][1] if stack else _ENV_BEFORE.pop(k))


_ENV_STACKS: dict[str, list[tuple[object, str | None]]] = {}
_ENV_BEFORE: dict[str, str | None] = {}


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def current_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where there is one, so that
    nothing is changed, else by setting it and putting it back)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write a whole file or nothing: a temporary file beside ``path``, fsync, then rename.

    The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the
    umask), or keeps the mode of the file it replaces.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = p.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600 whatever the umask
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
    from tokcal.errors import TokcalError

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
        tokcal.errors.TokcalError: --output data.jsonl is also an input; expected a new file name
    """
    from tokcal.errors import TokcalError

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
        check_writable(p.parent, option, create=False)


def check_writable(folder: str | Path, what: str, *, create: bool = True) -> None:
    """Create and remove a file in ``folder``: the one check that also catches a read-only
    mount, an immutable folder or a full quota, for root too.

    Args:
        folder: where files will be written.
        what: names it in the message (an option such as ``--output``, or a store).
        create: make ``folder`` if it is missing; with ``False`` nothing is made yet and the
            probe goes into its nearest existing parent (where it would be made).

    Raises:
        TokcalError: naming ``what``, the folder and the reason.
    """
    from tokcal.errors import TokcalError

    p = Path(folder)
    target = p
    if not create:
        target = p.resolve()
        while not target.exists():
            target = target.parent
    if target.exists() and not target.is_dir():
        raise TokcalError(f"{what}: {target} is a file, so {p} cannot be a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=target, prefix=".tokcal-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TokcalError(f"cannot write {what} into {p} ({exc.strerror or exc}); expected a writable folder: "
                          "fix its permissions or choose another") from exc


@contextmanager
def exclusive_lock(path: str | Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold a lock file for the block, so that one process at a time writes ``what`` on
    this machine; another process that holds it makes this fail, at once or after waiting
    up to ``wait`` seconds for it to let go.

    The file records the holder's PID and command (``tokcal backfill``) for the message; it is left in
    place (removing it would let a third process lock a different file). Where there is
    no ``fcntl`` (Windows) the block runs unlocked.

    Raises:
        TokcalError: another process holds the lock (its PID in the message).

    Example:
        >>> import tempfile
        >>> lock = Path(tempfile.mkdtemp()) / "run.lock"
        >>> with exclusive_lock(lock, "local run r1"):
        ...     with exclusive_lock(lock, "local run r1"):
        ...         pass
        Traceback (most recent call last):
        ...
        tokcal.errors.TokcalError: local run r1 is being written by another tokcal process ...
    """
    from tokcal.errors import TokcalError

    try:
        import fcntl
    except ImportError:  # no flock on this platform: nothing to serialise with
        yield
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            _flock_within(fcntl, fd, wait)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            raise TokcalError(
                f"{what} is being written by another tokcal process ({_holder_text(holder)}); expected one "
                f"writer at a time: wait for it to finish (or stop it), then run this again. Lock: {p}"
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:2]])
        os.pwrite(fd, f"{os.getpid()} {command[:100]}\n".encode("utf-8", "replace"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock_within(fcntl: Any, fd: int, wait: float) -> None:
    """Take the lock on ``fd``, trying every 20 ms for up to ``wait`` seconds; raises
    ``BlockingIOError`` when another process still holds it."""
    import time

    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _holder_text(recorded: str) -> str:
    pid, _, command = recorded.partition(" ")
    return f"PID {pid}: {command}" if command else f"PID {pid}"
