"""Eval sources: where an eval set comes from and how it becomes token batches.

``tokcal extract`` and ``tokcal backfill`` take one :class:`EvalSource`, so the choice
between a data file and LLaMA-Factory's own pipeline (and, next, image data sets) is made
once, where the source is built:

- :class:`DataFile`: JSON/JSONL records (messages, alpaca, sharegpt), rendered with the
  checkpoint's chat template and tokenised as SFT training does;
- ``callbacks.llamafactory_data.LlamaFactorySource``: the eval set LLaMA-Factory builds
  from a training YAML, token for token as in training.

The jobs call, in this order: :meth:`EvalSource.check` (everything that can fail without
a model, before any checkpoint loads), then per checkpoint :meth:`~EvalSource.tokenizer_for`,
:meth:`~EvalSource.cache_key` (examples are built once per key),
:meth:`~EvalSource.examples` and :meth:`~EvalSource.batches`.

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

from tracking.data.batches import make_batches, pad_id_of
from tracking.data.conversation import Example, tokenize_records
from tracking.data.records import read_records, to_messages
from tracking.errors import TokcalError


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

    def tokenizer_for(self, tokenizer: Any) -> Any:
        """The tokenizer to tokenise and score with, given the checkpoint's own."""
        return tokenizer

    def cache_key(self, tokenizer: Any) -> str:
        """Examples built with one key are reused for every checkpoint with that key."""
        return tokenizer_fingerprint(tokenizer)

    def batches(self, examples: Sequence[Example], tokenizer: Any, *, max_tokens: int) -> list[dict[str, Any]]:
        """Length-sorted, right-padded batches within ``max_tokens`` padded tokens."""
        return make_batches(examples, pad_id_of(tokenizer), max_tokens=max_tokens)

    def metadata(self) -> dict[str, Any]:
        """What to record with the results about where they came from."""
        return {"source": self.name}


class DataFile(EvalSource):
    """JSON or JSONL records (messages, alpaca or sharegpt), see :mod:`tracking.data.records`.

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

    @property
    def records(self) -> list[dict[str, Any]]:
        """The records that will be scored (after :meth:`check`)."""
        if self._records is None:
            self.check()
        return self._records or []

    def check(self) -> None:
        records = read_records(self.path)[: self.max_samples]
        for i, r in enumerate(records):
            to_messages(r, f"{self.name}, record {i}")
        self._records = records

    def examples(self, tokenizer: Any, *, progress: bool = False) -> list[Example]:
        return tokenize_records(self.records, tokenizer, chat_template=self.chat_template,
                                progress=progress, name=self.name)

    def cache_key(self, tokenizer: Any) -> str:
        return tokenizer_fingerprint(tokenizer, self.chat_template)

    def metadata(self) -> dict[str, Any]:
        return {"source": str(self.path), "records": len(self.records)}


def as_source(data: EvalSource | str | os.PathLike[str], *, chat_template: str | None = None,
              max_samples: int | None = None) -> EvalSource:
    """``data`` itself when it is an :class:`EvalSource`, else a :class:`DataFile` of that path."""
    if isinstance(data, EvalSource):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise TokcalError(f"expected an eval data file path or an EvalSource, got {type(data).__name__}")
    return DataFile(data, chat_template=chat_template, max_samples=max_samples)


def tokenizer_fingerprint(tokenizer: Any, chat_template: str | None = None) -> str:
    """A hash of everything tokenisation depends on: vocabulary, merges, normaliser,
    added tokens, chat template, end-of-sequence and pad tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    extra = (type(tokenizer).__name__, chat_template or getattr(tokenizer, "chat_template", None),
             getattr(tokenizer, "eos_token", None), getattr(tokenizer, "pad_token_id", None))
    h.update(repr(extra).encode("utf-8"))
    return h.hexdigest()
