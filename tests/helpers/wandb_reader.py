"""Read an offline W&B run file (``run-<id>.wandb``) back, for assertions on real output.

wandb 0.31 writes the file from its Go core and ships no Python reader. The format,
checked against files this wandb writes (``tests/test_backend_wandb.py``):

* a 7-byte header: ``b":W&B"``, magic ``0xBEE1`` (uint16, little-endian), version ``0``;
* then LevelDB log framing: 32 KiB blocks; each record has a 7-byte header, checksum
  (uint32 LE), length (uint16 LE), type (FULL=1, FIRST=2, MIDDLE=3, LAST=4); a block tail
  shorter than 7 bytes is zero padding. NOTE: the checksum is plain CRC-32 (IEEE, what
  ``zlib.crc32`` computes) over the type byte then the data, not the CRC-32C that
  LevelDB itself uses;
* each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``.

History items carry ``nested_key``: ``["eval/x"]`` for a scalar, ``["eval/h", "_type"]``
and siblings for media. :func:`history_rows` rebuilds them as nested dicts, e.g.
``row["eval/h"] == {"_type": "histogram", "values": [...], "bins": [...]}``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

__all__ = ["OfflineRun", "wandb_offline", "read_config", "read_records", "history_rows", "find_run_file", "WandbFileError"]

HEADER = struct.Struct("<4sHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B run file or is corrupt."""


def find_run_file(root: str | Path) -> Path:
    """The single ``run-*.wandb`` file under ``root`` (a ``wandb`` dir or a run dir).

    First stops W&B's background service (``wandb.teardown()``): it writes the file
    asynchronously and can still be at it after ``run.finish()`` returns.
    """
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if getattr(wandb, "run", None) is not None:
            wandb.run.finish()
        wandb.teardown()
    files = sorted(Path(root).rglob("run-*.wandb"))
    if len(files) != 1:
        raise WandbFileError(f"expected one run-*.wandb under {root}, got {[str(f) for f in files]}")
    return files[0]


def _payloads(data: bytes) -> list[bytes]:
    if len(data) < HEADER.size:
        raise WandbFileError(f"expected a {HEADER.size}-byte header, got a {len(data)}-byte file")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise WandbFileError(f"expected header {IDENT!r}/{MAGIC:#x}/{VERSION}, got {ident!r}/{magic:#x}/{version}")
    out: list[bytes] = []
    parts: list[bytes] = []
    pos = HEADER.size
    while pos < len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:
            pos += left_in_block  # zero-padded block tail
            continue
        if pos + RECORD_HEADER.size > len(data):
            break
        crc, length, rtype = RECORD_HEADER.unpack_from(data, pos)
        if rtype == 0 and length == 0:  # preallocated / padding
            pos += left_in_block
            continue
        start = pos + RECORD_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            break  # a record cut short at the end of a file still being written
        if zlib.crc32(chunk, zlib.crc32(bytes([rtype]))) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"checksum mismatch in the record at offset {pos}")
        if rtype == FULL:
            out.append(chunk)
        elif rtype == FIRST:
            parts = [chunk]
        elif rtype == MIDDLE:
            parts.append(chunk)
        elif rtype == LAST:
            parts.append(chunk)
            out.append(b"".join(parts))
            parts = []
        else:
            raise WandbFileError(f"expected a record type in 1..4, got {rtype} at offset {pos}")
        pos = start + length
    return out


def read_records(path: str | Path) -> list[Any]:
    """Every ``Record`` in the file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for payload in _payloads(Path(path).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        records.append(rec)
    return records


def history_rows(path: str | Path) -> list[dict[str, Any]]:
    """The run's history rows (what ``wandb.log`` wrote), JSON values decoded."""
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in rec.history.item:
            keys = list(item.nested_key) or [item.key]
            value = json.loads(item.value_json)
            node = row
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        rows.append(row)
    return rows


def read_config(path: str | Path) -> dict[str, Any]:
    """The run config: what ``wandb.init`` set (the run record), then every config update."""
    config: dict[str, Any] = {}
    for rec in read_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            cfg = rec.run.config
        elif kind == "config":
            cfg = rec.config
        else:
            continue
        for item in cfg.update:
            keys = list(item.nested_key) or [item.key]
            node = config
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = json.loads(item.value_json)
        for item in cfg.remove:
            config.pop(item.key, None)
    return config


class OfflineRun:
    """What ``wandb.Api().run(path)`` gives for the online copy of an offline run, served from
    the offline run's own files: its history rows, config and run files (``files/``). The
    W&B service cannot be reached from the tests; this is the data ``wandb sync`` uploads.
    """

    def __init__(self, run_file: str | Path, name: str | None = None) -> None:
        self.run_file = Path(run_file)
        self.id = self.run_file.stem.removeprefix("run-")
        self.name = name
        self.config = read_config(self.run_file)
        self._rows = history_rows(self.run_file)
        self._files = self.run_file.parent / "files"

    def scan_history(self, keys: Any = None) -> Any:
        return iter(self._rows)

    def files(self) -> list[Any]:
        return [_File(self._files, p.relative_to(self._files).as_posix())
                for p in sorted(self._files.rglob("*")) if p.is_file()]

    def file(self, name: str) -> Any:
        if not (self._files / name).is_file():
            raise FileNotFoundError(f"no file {name} in run {self.id}")
        return _File(self._files, name)


class _File:
    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name

    def download(self, root: str = ".", replace: bool = False) -> Any:
        import shutil

        target = Path(root) / self.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / self.name, target)
        return open(target, "rb")


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """W&B offline, with every file it writes under ``tmp_path``; yields the folder that
    holds the runs (``find_run_file`` looks there). A run left open is finished afterwards."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    yield tmp_path / "wandb_dir"
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish()
