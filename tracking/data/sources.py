"""Eval sources: where an eval set comes from and how it becomes token batches.

``tokcal extract`` and ``tokcal backfill`` take one :class:`EvalSource`, so the choice
between a data file and LLaMA-Factory's own pipeline (and, next, image data sets) is made
once, where the source is built:

- :class:`DataFile`: JSON/JSONL records (messages, alpaca, sharegpt), rendered with the
  checkpoint's chat template and tokenised as SFT training does;
- :class:`ImageDataFile`: the same with page images (image parts, or an ``images`` column
  with ``<image>`` placeholders), scored with the checkpoint's processor
  (:mod:`tokcal.data.images`); :func:`open_data_file` picks it when records carry images;
- ``tokcal.callbacks.llamafactory_data.LlamaFactorySource``: the eval set LLaMA-Factory builds
  from a training YAML, token for token as in training.

The jobs call, in this order: :meth:`EvalSource.check` (everything that can fail without
a model, before any checkpoint loads), then per checkpoint: load the model with the
tokenizer, or with the processor when :meth:`~EvalSource.processor_options` is not ``None``
(image sources), then :meth:`~EvalSource.tokenizer_for`, :meth:`~EvalSource.cache_key`
(examples are built once per key), :meth:`~EvalSource.examples` and
:meth:`~EvalSource.batches` (which may be lazy: a :class:`~tokcal.data.batches.LazyBatches`).

Example:
    >>> source = DataFile("eval.jsonl")  # doctest: +SKIP
    >>> source.check()  # a bad record fails here, before any model loads  # doctest: +SKIP
    >>> examples = source.examples(tokenizer)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

from tokcal.data import images as img
from tokcal.data.batches import LazyBatches, group_by_length, make_batches, pad_id_of
from tokcal.data.conversation import Example, tokenize_records
from tokcal.data.records import read_located, record_where, sample_id, to_messages
from tokcal.errors import TokcalError


class EvalSource(ABC):
    """An eval set that the jobs can check once and turn into batches per checkpoint."""

    #: Shown in progress bars and messages.
    name: str = "eval set"

    @abstractmethod
    def check(self) -> None:
        """Read and validate everything that needs no model; raise :class:`TokcalError`."""

    @abstractmethod
    def examples(self, tokenizer: Any, *, progress: bool = False) -> list[Example]:
        """The tokenised examples, in the eval set's order (``sample_id`` set)."""

    def processor_options(self) -> dict[str, Any] | None:
        """``None``: score with the checkpoint's tokenizer. A mapping: load the checkpoint's
        processor with these options (``min_pixels``, ``max_pixels``) and pass it as the
        ``tokenizer`` of the other methods (image sources)."""
        return None

    def tokenizer_for(self, tokenizer: Any) -> Any:
        """The tokenizer (or processor) to tokenise and score with, given the checkpoint's own."""
        return tokenizer

    def cache_key(self, tokenizer: Any) -> str:
        """Examples built with one key are reused for every checkpoint with that key."""
        return tokenizer_fingerprint(tokenizer)

    def batches(self, examples: Sequence[Example], tokenizer: Any, *, max_tokens: int,
                model: Any = None) -> Sequence[dict[str, Any]]:
        """Length-sorted, right-padded batches within ``max_tokens`` padded tokens.

        ``model`` is the model that will score them (for sources whose collator needs it,
        e.g. LLaMA-Factory's, which computes Qwen2-VL's 3-D positions with it)."""
        return make_batches(examples, pad_id_of(tokenizer), max_tokens=max_tokens)

    def metadata(self) -> dict[str, Any]:
        """What to record with the results about where they came from."""
        return {"source": self.name}

    def prompt_images(self, example: Example) -> list[Any]:
        """The images of ``example`` as PIL images, in the order of its image tokens, for an
        engine that takes them apart from the tokens (vLLM); ``[]`` for a source without images."""
        return []

    def max_images(self) -> int:
        """The most images one record has (0 for a source without images)."""
        return 0


class DataFile(EvalSource):
    """JSON or JSONL records (messages, alpaca or sharegpt), see :mod:`tokcal.data.records`.

    Args:
        path: the data file.
        chat_template: a Jinja template to render with instead of the tokenizer's.
        max_samples: use only the first N records.

    Example:
        >>> import json, tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        >>> _ = f.write(json.dumps({"instruction": "Paper?", "output": "\\\\boxed{Accept}"}) + "\\n"); f.close()
        >>> source = DataFile(f.name); source.check(); len(source.records)
        1
    """

    def __init__(self, path: str | os.PathLike[str], *, chat_template: str | None = None,
                 max_samples: int | None = None) -> None:
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                        or max_samples < 1):
            raise TokcalError(f"expected max_samples >= 1, got {max_samples!r}")
        self.path = Path(path)
        self.name = self.path.name
        self.chat_template = chat_template
        self.max_samples = max_samples
        self._records: list[dict[str, Any]] | None = None
        self._lines: list[int] | None = None  # the line each record starts on, for messages

    @property
    def records(self) -> list[dict[str, Any]]:
        """The records that will be scored (after :meth:`check`)."""
        if self._records is None:
            self.check()
        return self._records or []

    def _read(self) -> list[dict[str, Any]]:
        if self._records is None:
            records, self._lines = read_located(self.path)
            self._records = records[: self.max_samples]
        return self._records

    def check(self) -> None:
        records = self._read()
        for i, r in enumerate(records):
            where = record_where(self.name, i, self._lines)
            if img.record_has_images(r):
                raise TokcalError(f"{where} has images; score image data sets with ImageDataFile "
                                  "(open_data_file picks it)")
            for j, m in enumerate(to_messages(r, where)):
                if isinstance(m["content"], list):
                    kinds = sorted({p["type"] for p in m["content"]} - {"text"})
                    if kinds:
                        raise TokcalError(f"{where}, message {j}: expected text parts in a data set without images, "
                                          f"got a {kinds[0]!r} part")
            sample_id(r, i, where)

    def examples(self, tokenizer: Any, *, progress: bool = False) -> list[Example]:
        return tokenize_records(self.records, tokenizer, chat_template=self.chat_template,
                                progress=progress, name=self.name, lines=self._lines)

    def cache_key(self, tokenizer: Any) -> str:
        return tokenizer_fingerprint(tokenizer, self.chat_template)

    def metadata(self) -> dict[str, Any]:
        return {"source": str(self.path), "records": len(self.records)}


class ImageDataFile(DataFile):
    """JSON or JSONL records with page images, scored with the checkpoint's processor.

    Records: ``messages`` with ``{"type": "image", "image": PATH}`` parts, or
    LLaMA-Factory alpaca/sharegpt records with an ``images`` column and ``<image>``
    placeholders (see :mod:`tokcal.data.images`). Records without images may be mixed in.

    Args:
        path: the data file.
        image_dir: relative image paths resolve here (LLaMA-Factory's ``media_dir``);
            default: the data file's folder.
        min_pixels, max_pixels: passed to the image processor (it resizes each image into
            this many pixels); default: the checkpoint's own.
        image_pixel_limit: refuse image files of more pixels (width x height) than this,
            before any model loads; default: Pillow's decompression-bomb limit (89,478,485).
            A higher limit is also Pillow's for the rest of the process.
        padding_side: ``"right"`` (default) or ``"left"``.
        chat_template, max_samples: as for :class:`DataFile`.

    Example:
        >>> source = ImageDataFile("pages.jsonl", max_pixels=28 * 28 * 512)  # doctest: +SKIP
        >>> source.check()  # every image's header is read; a missing one fails here  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, image_dir: str | os.PathLike[str] | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None, padding_side: str = "right",
                 chat_template: str | None = None, max_samples: int | None = None,
                 image_pixel_limit: int | None = None) -> None:
        super().__init__(path, chat_template=chat_template, max_samples=max_samples)
        img.check_pixels(min_pixels, max_pixels)
        if image_pixel_limit is not None and (isinstance(image_pixel_limit, bool)
                                              or not isinstance(image_pixel_limit, int) or image_pixel_limit < 1):
            raise TokcalError(f"expected image_pixel_limit as a positive integer, got {image_pixel_limit!r}")
        self.image_pixel_limit = image_pixel_limit
        if padding_side not in ("right", "left"):
            raise TokcalError(f"expected padding_side 'right' or 'left', got {padding_side!r}")
        self.image_dir = image_dir
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.padding_side = padding_side
        self._convs: list[img.ImageConversation] | None = None
        self._pixels: dict[str, int | None] = {}

    @property
    def conversations(self) -> list[img.ImageConversation]:
        """The records as messages with resolved image parts (after :meth:`check`)."""
        if self._convs is None:
            self.check()
        return self._convs or []

    def check(self) -> None:
        records = self._read()
        base = img.base_dir(self.path, self.image_dir)
        if self.image_pixel_limit is not None:
            img.allow_pixels(self.image_pixel_limit)  # the processor opens the images with Pillow too
        self._convs = img.build_conversations(records, self.name, base, lines=self._lines,
                                              pixel_limit=self.image_pixel_limit)

    def processor_options(self) -> dict[str, Any]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    def examples(self, tokenizer: Any, *, progress: bool = False) -> list[Example]:
        processor = _require_processor(tokenizer)
        self._pixels = img.pixel_bounds(processor)
        convs: Any = self.conversations
        if progress:
            from tqdm.auto import tqdm

            convs = tqdm(convs, desc="tokenising", unit="rec", leave=False)
        return [img.conversation_example(processor, c, i, chat_template=self.chat_template)
                for i, c in enumerate(convs)]

    def cache_key(self, tokenizer: Any) -> str:
        processor = _require_processor(tokenizer)
        return tokenizer_fingerprint(processor.tokenizer, self.chat_template or getattr(
            processor, "chat_template", None)) + img.processor_fingerprint(processor)

    def batches(self, examples: Sequence[Example], tokenizer: Any, *, max_tokens: int,
                model: Any = None) -> LazyBatches:
        """Length-sorted batches within ``max_tokens`` padded tokens (image tokens counted),
        built one at a time as they are scored (pixels decoded per batch)."""
        processor = _require_processor(tokenizer)
        convs = self.conversations
        groups = group_by_length([len(e) for e in examples], max_tokens=max_tokens)

        def build(group: list[int]) -> dict[str, Any]:
            return img.collate_conversations(processor, convs, examples, group, chat_template=self.chat_template,
                                             padding_side=self.padding_side)

        return LazyBatches(groups, build)

    def prompt_images(self, example: Example) -> list[Any]:
        """The record's images loaded as the processor loads them (EXIF orientation applied, RGB)."""
        from transformers.image_utils import load_image

        conv = self.conversations[example.extra.get("record", 0)]
        return [load_image(str(p)) for p in conv.images]

    def max_images(self) -> int:
        return max((len(c.images) for c in self.conversations), default=0)

    def metadata(self) -> dict[str, Any]:
        n_images = sum(len(c.images) for c in self.conversations)
        return {**super().metadata(), "images": n_images, "image_dir": None if self.image_dir is None else
                str(self.image_dir), **(self._pixels or self.processor_options())}


def _require_processor(tokenizer: Any) -> Any:
    if not hasattr(tokenizer, "image_processor") or not hasattr(tokenizer, "tokenizer"):
        raise TokcalError(f"an image data set needs the checkpoint's processor, got {type(tokenizer).__name__}; "
                          "expected preprocessor_config.json (or processor_config.json) in the checkpoint, "
                          "or pass --tokenizer DIR with the processor files")
    return tokenizer


def open_data_file(path: str | os.PathLike[str], *, chat_template: str | None = None,
                   max_samples: int | None = None, image_dir: str | os.PathLike[str] | None = None,
                   min_pixels: int | None = None, max_pixels: int | None = None,
                   image_pixel_limit: int | None = None) -> DataFile:
    """A :class:`DataFile`, or an :class:`ImageDataFile` when a record carries images.

    The file is read here (a bad file fails here, before any model loads).

    Raises:
        TokcalError: the file cannot be read, or image options for a file without images.
    """
    p = Path(path)
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise TokcalError(f"expected max_samples >= 1, got {max_samples!r}")
    records, lines = read_located(p)
    records = records[:max_samples]
    if any(img.record_has_images(r) for r in records):
        source: DataFile = ImageDataFile(p, image_dir=image_dir, min_pixels=min_pixels, max_pixels=max_pixels,
                                         chat_template=chat_template, max_samples=max_samples,
                                         image_pixel_limit=image_pixel_limit)
    else:
        given = [n for n, v in (("--image-dir", image_dir), ("--min-pixels", min_pixels),
                                ("--max-pixels", max_pixels), ("--image-pixel-limit", image_pixel_limit))
                 if v is not None]
        if given:
            raise TokcalError(f"{' and '.join(given)} given but {p.name} has no images; expected records with "
                              "image parts or an 'images' column")
        source = DataFile(p, chat_template=chat_template, max_samples=max_samples)
    source._records, source._lines = records, lines
    return source


def as_source(data: EvalSource | str | os.PathLike[str], *, chat_template: str | None = None,
              max_samples: int | None = None) -> EvalSource:
    """``data`` itself when it is an :class:`EvalSource`, else :func:`open_data_file` of that path."""
    if isinstance(data, EvalSource):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise TokcalError(f"expected an eval data file path or an EvalSource, got {type(data).__name__}")
    return open_data_file(data, chat_template=chat_template, max_samples=max_samples)


def tokenizer_fingerprint(tokenizer: Any, chat_template: str | None = None) -> str:
    """A hash of everything tokenisation depends on: vocabulary, merges, normaliser,
    added tokens, chat template, end-of-sequence and pad tokens."""
    h = hashlib.sha256()
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    extra = (type(tokenizer).__name__, chat_template or getattr(tokenizer, "chat_template", None),
             getattr(tokenizer, "eos_token", None), getattr(tokenizer, "pad_token_id", None))
    h.update(repr(extra).encode("utf-8"))
    return h.hexdigest()
