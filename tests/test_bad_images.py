"""Image files that are not what they claim, checked before any model loads: a header that
claims more pixels than the limit, a FIFO or a device given as an image. Each is a one-line
error naming the record, the path and (for size) the limit and the option that raises it."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from tokcal.cli.main import main
from tokcal.data.sources import ImageDataFile
from tokcal.errors import TokcalError


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit RGB), with no pixel data: what
    a decompression bomb's header looks like. Pillow reads it as that size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _page(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 180, 160)).save(path)
    return path


def _data(tmp_path: Path, images: list[str]) -> Path:
    rows = [{"id": f"r{i}", "messages": [
        {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Decide."}]},
        {"role": "assistant", "content": "\\boxed{Accept}"}]} for i, img in enumerate(images)]
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _extract(tmp_path: Path, data: Path, capsys, *extra: str) -> str:
    """Run extract on a checkpoint that does not exist: the error must come from the data,
    so nothing was loaded."""
    code = main(["extract", "--checkpoint", str(tmp_path / "no-such-checkpoint"), "--data", str(data),
                 "--output", str(tmp_path / "out.jsonl"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out.jsonl").exists()
    return err


def test_header_claiming_huge_size_is_refused_with_the_limit_and_the_option(tmp_path, capsys):
    _page(tmp_path / "ok.png")
    bomb = _png_header(tmp_path / "bomb.png", 100_000, 100_000)
    err = _extract(tmp_path, _data(tmp_path, ["ok.png", "bomb.png"]), capsys)
    assert "line 2, record 1 (id 'r1')" in err and str(bomb) in err, err
    assert "100000x100000" in err or "10,000,000,000 pixels" in err, err
    assert "89,478,485" in err and "--image-pixel-limit" in err, err
    assert "DecompressionBomb" not in err


def test_image_over_a_lower_limit_names_its_size(tmp_path, capsys):
    _page(tmp_path / "ok.png", (40, 30))
    _page(tmp_path / "big.png", (60, 50))
    err = _extract(tmp_path, _data(tmp_path, ["ok.png", "big.png"]), capsys, "--image-pixel-limit", "2000")
    assert "record 1 (id 'r1')" in err and "60x50 = 3,000 pixels" in err and "2,000" in err, err


def test_a_raised_limit_lets_the_image_through(tmp_path):
    _page(tmp_path / "big.png", (60, 50))
    data = _data(tmp_path, ["big.png"])
    with pytest.raises(TokcalError, match="more than the limit of 2,999"):
        ImageDataFile(data, image_pixel_limit=2999).check()
    source = ImageDataFile(data, image_pixel_limit=3000)
    source.check()
    assert source.conversations[0].sizes == [(50, 60)]


def test_a_fifo_is_not_a_regular_file(tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block: the check must not open it
    err = _extract(tmp_path, _data(tmp_path, [str(fifo)]), capsys)
    assert "record 0 (id 'r0')" in err and str(fifo) in err and "named pipe" in err and "not a regular file" in err
    assert "not found" not in err


def test_a_device_is_not_a_regular_file(tmp_path, capsys):
    err = _extract(tmp_path, _data(tmp_path, ["/dev/zero"]), capsys)
    assert "/dev/zero is a character device, not a regular file" in err and "not found" not in err


def test_a_folder_is_not_a_regular_file(tmp_path, capsys):
    (tmp_path / "dir.png").mkdir()
    err = _extract(tmp_path, _data(tmp_path, ["dir.png"]), capsys)
    assert "is a folder, not a regular file" in err


def test_bad_limit_values(tmp_path):
    _page(tmp_path / "ok.png")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(TokcalError, match="image_pixel_limit as a positive integer"):
            ImageDataFile(_data(tmp_path, ["ok.png"]), image_pixel_limit=bad)
