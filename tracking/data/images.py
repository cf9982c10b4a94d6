"""Image eval sets: records with page images, scored with the checkpoint's processor.

Two record shapes carry images (both also in JSONL):

- ``messages`` whose content is a list of parts: ``{"type": "text", "text": ...}`` and
  ``{"type": "image", "image": PATH}`` (``"path"`` works too);
- LLaMA-Factory alpaca/sharegpt/messages records with an ``images`` column: one
  ``<image>`` placeholder in the text per image, in order.

Both are normalised to messages with image parts. A relative path resolves against the
data file's folder, or against ``image_dir`` when given (LLaMA-Factory's ``media_dir``).
:meth:`ImageDataFile.check` opens every image's header (size, EXIF orientation) and verifies
the file, without decoding its pixels, so a missing or unreadable image, or a placeholder
count that differs from the image count, fails in one line naming the record and the
path, before any model loads.

Each record is rendered with the processor's chat template and tokenised as training does
(labels on the assistant turns only); each image token is expanded to the number of tokens
the image processor makes of that image, computed from its size with the image processor's
own resize rules (no decoding), so length-sorted batches stay within the token budget
counting the image tokens. The pixels are decoded per batch, by the processor itself
(``apply_chat_template(..., tokenize=True)``), when the batch is scored: memory stays flat.

The eval source itself is :class:`tokcal.data.sources.ImageDataFile`; this module holds
its parts.

Example:
    >>> source = ImageDataFile("pages/eval.jsonl", max_pixels=401408)  # doctest: +SKIP
    >>> source.check()  # a missing page fails here, naming the record and the path  # doctest: +SKIP
    >>> scores = score_checkpoint("out/checkpoint-400", source, DecisionSpec())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tokcal.core.positions import IGNORE_INDEX
from tokcal.data.batches import pad_id_of, pad_rows
from tokcal.data.conversation import Example, render_chat, tokenize_rendered
from tokcal.data.records import message_text, record_where, sample_id, to_messages
from tokcal.errors import TokcalError, first_line

#: LLaMA-Factory's image placeholder in the text of records with an ``images`` column.
IMAGE_PLACEHOLDER = "<image>"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^data:")
_ORIENTATION_TAG = 0x0112  # EXIF orientation; 5-8 swap width and height
_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def default_pixel_limit() -> int | None:
    """The largest image (width x height) read without ``image_pixel_limit``: Pillow's own
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 by default)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else int(limit)


def allow_pixels(limit: int) -> None:
    """Let Pillow open images up to ``limit`` pixels in this process (the processor opens
    them with Pillow when the batch is scored); a lower limit already set is raised, never lowered."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = int(limit)


def record_has_images(record: dict[str, Any]) -> bool:
    """Whether a record carries images (an ``images`` column or image parts)."""
    if record.get("images"):
        return True
    msgs = record.get("messages")
    return isinstance(msgs, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "image" for p in m["content"])
        for m in msgs
    )


@dataclass
class ImageConversation:
    """One record as messages with image parts (absolute paths) and the images' sizes."""

    messages: list[dict[str, Any]]
    images: list[Path]
    sizes: list[tuple[int, int]]  # (height, width) as the processor sees them (EXIF applied)
    sample_id: Any
    where: str


def _image_part(part: dict[str, Any], where: str) -> str:
    value = part.get("image", part.get("path"))
    if not isinstance(value, str) or not value:
        raise TokcalError(f"{where}: expected an image part as {{\"type\": \"image\", \"image\": PATH}}, got {part!r}")
    return value


def image_messages(record: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Messages with ``{"type": "image", "image": PATH}`` parts, and the raw paths in order.

    Raises:
        TokcalError: an unknown part type, image parts and an ``images`` column together,
            an ``images`` column that is not a list of paths, or a different number of
            ``<image>`` placeholders than images.

    Example:
        >>> msgs, paths = image_messages({"instruction": "<image>Decide.", "output": "\\\\boxed{Accept}",
        ...                               "images": ["p1.png"]}, "record 0")
        >>> msgs[0]["content"], paths
        ([{'type': 'image', 'image': 'p1.png'}, {'type': 'text', 'text': 'Decide.'}], ['p1.png'])
    """
    column = record.get("images")
    msgs = to_messages(record, where)
    paths: list[str] = []
    if column is None or column == []:
        out = []
        for m in msgs:
            content = m["content"]
            if isinstance(content, list):
                parts = []
                for p in content:
                    kind = p.get("type") if isinstance(p, dict) else None
                    if kind == "image":
                        paths.append(_image_part(p, where))
                        parts.append({"type": "image", "image": paths[-1]})
                    elif kind == "text":
                        parts.append({"type": "text", "text": str(p.get("text", ""))})
                    else:
                        raise TokcalError(f"{where}: expected message parts of type 'text' or 'image', got {kind!r}")
                content = parts
            out.append({"role": m["role"], "content": content})
        return out, paths
    if isinstance(column, str):
        column = [column]
    if not isinstance(column, list) or not all(isinstance(x, str) and x for x in column):
        raise TokcalError(f"{where}: expected 'images' as a list of image paths, got {column!r}")
    if any(isinstance(m["content"], list) for m in msgs):
        raise TokcalError(f"{where}: has both an 'images' column and image parts in its messages; expected one of them")
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in msgs if isinstance(m["content"], str))
    if placeholders != len(column):
        raise TokcalError(f"{where}: {placeholders} {IMAGE_PLACEHOLDER} placeholders for {len(column)} images; "
                          f"expected one {IMAGE_PLACEHOLDER} in the text per entry of 'images'")
    out, it = [], iter(column)
    for m in msgs:
        content = m["content"] if isinstance(m["content"], str) else message_text(m["content"])
        if IMAGE_PLACEHOLDER not in content:
            out.append({"role": m["role"], "content": content})
            continue
        parts = []
        for k, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
            if k:
                paths.append(next(it))
                parts.append({"type": "image", "image": paths[-1]})
            if text:
                parts.append({"type": "text", "text": text})
        out.append({"role": m["role"], "content": parts})
    return out, paths


def resolve_image(raw: str, base: Path, where: str) -> Path:
    """``raw`` as an absolute path (a relative one against ``base``); URLs are refused."""
    if _URL.match(raw):
        raise TokcalError(f"{where}: image {raw!r} is a URL; expected a local image file (download it first)")
    p = Path(raw).expanduser()
    return p if p.is_absolute() else (base / p)


def image_size(path: Path, where: str, pixel_limit: int | None = None) -> tuple[int, int]:
    """``(height, width)`` from the file's header, EXIF orientation applied; the file is
    verified but its pixels are not decoded.

    Args:
        pixel_limit: refuse images of more pixels (width x height) than this; default
            :func:`default_pixel_limit`.

    Raises:
        TokcalError: the file is missing, not a regular file (a FIFO, a device), larger
            than ``pixel_limit``, or not a readable image (naming ``where`` and the path).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TokcalError(f"{where}: image not found: {path}") from None
    except OSError as exc:
        raise TokcalError(f"{where}: cannot read image {path}: {first_line(exc, with_type=True)}") from exc
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise TokcalError(f"{where}: image {path} is {kind}, not a regular file; expected an image file")
    limit = default_pixel_limit() if pixel_limit is None else pixel_limit
    try:
        with warnings.catch_warnings():
            # Sizes are checked below against ``limit``, with a message that says what to do.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if limit is None or w * h <= limit:
                    im.verify()  # checks the file's structure without decoding the pixels
            with Image.open(path) as im:
                orientation = _orientation(im)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
        raise TokcalError(_too_large(where, path, size, limit)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TokcalError(f"{where}: cannot read image {path}: {first_line(exc, with_type=True)}") from exc
    if w < 1 or h < 1:
        raise TokcalError(f"{where}: image {path} is empty ({w}x{h})")
    if limit is not None and w * h > limit:
        raise TokcalError(_too_large(where, path, f"{w}x{h} = {w * h:,} pixels", limit))
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _too_large(where: str, path: Path, size: str, limit: int | None) -> str:
    return (f"{where}: image {path} has {size}, more than the limit of {limit or 0:,}; if it is a real image, "
            "raise the limit with --image-pixel-limit N (image_pixel_limit=N)")


def _orientation(im: Any) -> int:
    """The EXIF orientation from the header. PIL's ``getexif()`` on a PNG decodes the whole
    image to find a late eXIf chunk, so a PNG's is read only from the chunks before its pixels."""
    from PIL import Image

    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_ORIENTATION_TAG, 1))
    return int(im.getexif().get(_ORIENTATION_TAG, 1))


def image_token_counts(processor: Any, sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Tokens the processor makes of images of these ``(height, width)`` sizes, from the
    image processor's own resize rules (``get_number_of_image_patches``), no decoding."""
    ip = getattr(processor, "image_processor", None)
    fn = getattr(ip, "get_number_of_image_patches", None)
    if fn is None:
        raise TokcalError(f"{type(ip).__name__} cannot tell an image's token count from its size; tokcal scores "
                          "image data sets with processors that can (Qwen2-VL, Qwen2.5-VL, ...)")
    merge = int(getattr(ip, "merge_size", 1) or 1) ** 2
    return [int(fn(h, w, {})) // merge for h, w in sizes]


def image_token_id(processor: Any) -> int:
    """The id of the processor's image placeholder token."""
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        token = getattr(processor, "image_token", None)
        tid = processor.tokenizer.convert_tokens_to_ids(token) if token else None
    if tid is None:
        raise TokcalError(f"{type(processor).__name__} names no image token; expected a vision-language processor")
    return int(tid)


def pixel_bounds(processor: Any) -> dict[str, int | None]:
    """``{"min_pixels", "max_pixels"}`` the image processor resizes into."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    lo, hi = get("shortest_edge", None), get("longest_edge", None)
    return {"min_pixels": None if lo is None else int(lo), "max_pixels": None if hi is None else int(hi)}


def _chat_text(processor: Any, messages: list[dict[str, Any]], chat_template: str | None,
               where: str = "record") -> str:
    template = chat_template or getattr(processor, "chat_template", None) or getattr(
        processor.tokenizer, "chat_template", None)
    if not template:
        raise TokcalError("the processor has no chat template; add chat_template.jinja to the checkpoint "
                          "or pass --chat-template FILE")
    return render_chat(processor, messages, template, where)


def conversation_example(processor: Any, conv: ImageConversation, index: int, *,
                         chat_template: str | None = None) -> Example:
    """Token ids and labels of one record as the processor will make them, image tokens
    expanded by the image processor's arithmetic (no pixels decoded)."""
    tok = processor.tokenizer
    text = _chat_text(processor, conv.messages, chat_template, conv.where)
    ids, labels = tokenize_rendered(tok, text, conv.messages)
    img = image_token_id(processor)
    slots = [i for i, t in enumerate(ids) if t == img]
    if len(slots) != len(conv.images):
        raise TokcalError(f"{conv.where}: the chat template rendered {len(slots)} image tokens for "
                          f"{len(conv.images)} images; expected one per image part")
    counts = image_token_counts(processor, conv.sizes)
    out_ids: list[int] = []
    out_labels: list[int] = []
    k = 0
    for t, lab in zip(ids, labels):
        if t == img:
            out_ids += [img] * counts[k]
            out_labels += [IGNORE_INDEX] * counts[k]
            k += 1
        else:
            out_ids.append(t)
            out_labels.append(lab)
    return Example(out_ids, out_labels, conv.sample_id, extra={"record": index, "images": len(conv.images)})


def build_conversations(records: Sequence[dict[str, Any]], name: str, base: Path, *,
                        lines: Sequence[int] | None = None,
                        pixel_limit: int | None = None) -> list[ImageConversation]:
    """Normalise, resolve and check every record's images (headers only).

    Args:
        lines: the line each record starts on (named in messages).
        pixel_limit: the largest image in pixels (see :func:`image_size`).

    Raises:
        TokcalError: the first bad record: its shape, a placeholder/image count mismatch,
            a URL, or a missing, unreadable, too large or not regular image file (naming the
            record and the path).
    """
    sizes: dict[Path, tuple[int, int]] = {}
    out = []
    for i, r in enumerate(records):
        where = record_where(name, i, lines)
        rid = sample_id(r, i, where)
        where += f" (id {rid!r})" if "id" in r else ""
        msgs, raw = image_messages(r, where)
        paths = [resolve_image(x, base, where) for x in raw]
        for p in paths:
            if p not in sizes:
                sizes[p] = image_size(p, where, pixel_limit)
        it = iter(paths)
        for m in msgs:
            if isinstance(m["content"], list):
                for part in m["content"]:
                    if part["type"] == "image":
                        part["image"] = str(next(it))
        out.append(ImageConversation(as_parts(msgs), paths, [sizes[p] for p in paths], rid, where))
    return out


def as_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every message's content as a list of parts (a string becomes one text part), the form
    processors' ``apply_chat_template`` expect when they load images (transformers 5.6 needs
    it for every message); the templates render both forms alike."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
             else m["content"]} for m in messages]


def collate_conversations(processor: Any, convs: Sequence[ImageConversation], examples: Sequence[Example],
                          group: Sequence[int], *, chat_template: str | None = None,
                          padding_side: str = "right") -> dict[str, Any]:
    """One batch: each record through ``processor.apply_chat_template(tokenize=True)``
    (which loads and processes its images), every output key kept, then padded."""
    rows = []
    for i in group:
        conv = convs[examples[i].extra.get("record", i)]
        enc = processor.apply_chat_template(copy.deepcopy(conv.messages), tokenize=True, return_dict=True,
                                            return_tensors="pt", chat_template=chat_template or None)
        got = enc["input_ids"][0].tolist()
        if got != examples[i].input_ids:
            raise TokcalError(f"{conv.where}: the processor made {len(got)} tokens where tokcal counted "
                              f"{len(examples[i])}; its image token count or chat template differs from "
                              "what tokcal expected")
        rows.append(dict(enc))
    return pad_rows(rows, [examples[i].labels for i in group], pad_id_of(processor), np.asarray(group),
                    padding_side=padding_side)


def processor_fingerprint(processor: Any) -> str:
    """A hash of the processor settings that change tokens (image processor's JSON)."""
    ip = getattr(processor, "image_processor", None)
    text = ip.to_json_string() if hasattr(ip, "to_json_string") else repr(ip)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_pixels(min_pixels: int | None, max_pixels: int | None) -> None:
    """``min_pixels``/``max_pixels``: positive integers, min <= max."""
    for name, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise TokcalError(f"expected {name} as a positive integer, got {v!r}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise TokcalError(f"expected min_pixels <= max_pixels, got {min_pixels} > {max_pixels}")


def base_dir(data_path: Path, image_dir: str | os.PathLike[str] | None) -> Path:
    """Where relative image paths resolve: ``image_dir``, else the data file's folder."""
    if image_dir is None:
        return data_path.resolve().parent
    d = Path(image_dir).expanduser()
    if not d.is_dir():
        raise TokcalError(f"image folder not found: {d}")
    return d.resolve()
