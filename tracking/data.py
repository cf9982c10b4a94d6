"""Eval sets to token batches, the way SFT training sees them.

Records in JSON or JSONL, in one of three shapes:

- ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]``
- LLaMA-Factory alpaca: ``instruction``, ``input``, ``output`` (optional ``system``, ``history``)
- LLaMA-Factory sharegpt: ``conversations`` with ``from``/``value``

Each record is rendered with the tokenizer's chat template and tokenised whole; labels
cover the assistant turns only (-100 elsewhere), as in supervised fine-tuning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from tracking.errors import TokcalError

IGNORE_INDEX = -100
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


@dataclass
class Example:
    """One tokenised record."""

    input_ids: list[int]
    labels: list[int]
    sample_id: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON array (or ``{"data": [...]}``) or a JSONL file of records.

    Raises:
        TokcalError: the file is missing, empty, or a line is not a JSON object (the
            message gives the line number).
    """
    p = Path(path)
    if not p.is_file():
        raise TokcalError(f"data file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise TokcalError(f"data file {p} is empty; expected JSON or JSONL records")
    records: list[Any]
    if text.lstrip()[0] == "[" or (p.suffix == ".json" and text.lstrip()[0] == "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if p.suffix == ".json":
                raise TokcalError(f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
            data = None
        if data is not None:
            records = data.get("data", [data]) if isinstance(data, dict) else data
            return _check_objects(records, p, lines=False)
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TokcalError(f"{p}, line {n}: not valid JSON ({exc.msg}); expected one record per line") from exc
        if not isinstance(records[-1], dict):
            raise TokcalError(f"{p}, line {n}: expected a JSON object, got {type(records[-1]).__name__}")
    if not records:
        raise TokcalError(f"data file {p} has no records")
    return records


def _check_objects(records: Any, p: Path, lines: bool) -> list[dict[str, Any]]:
    if not isinstance(records, list):
        raise TokcalError(f"{p}: expected a list of records, got {type(records).__name__}")
    if not records:
        raise TokcalError(f"data file {p} has no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise TokcalError(f"{p}, record {i}: expected a JSON object, got {type(r).__name__}")
    return records


def _text(content: Any) -> str:
    """Plain text of a message's content (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is None:
        return ""
    raise TokcalError(f"expected message content as text or a list of parts, got {type(content).__name__}")


def to_messages(record: dict[str, Any], where: str = "record") -> list[dict[str, Any]]:
    """Normalise a record in any supported shape to chat ``messages``.

    Example:
        >>> to_messages({"instruction": "Review:", "input": "Good.", "output": "\\\\boxed{Accept}"})
        [{'role': 'user', 'content': 'Review:\\nGood.'}, {'role': 'assistant', 'content': '\\\\boxed{Accept}'}]
    """
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise TokcalError(f"{where}: expected 'messages' as a list of {{role, content}} objects")
        out = [{"role": m["role"], "content": m.get("content", "")} for m in msgs]
    elif "conversations" in record:
        out = []
        if record.get("system"):
            out.append({"role": "system", "content": record["system"]})
        for m in record["conversations"]:
            role = _SHAREGPT_ROLES.get(str(m.get("from", "")).lower())
            if role is None:
                raise TokcalError(
                    f"{where}: unknown sharegpt role {m.get('from')!r}; expected one of {sorted(_SHAREGPT_ROLES)}"
                )
            out.append({"role": role, "content": m.get("value", "")})
    elif "instruction" in record or "output" in record:
        out = []
        if record.get("system"):
            out.append({"role": "system", "content": record["system"]})
        for q, a in record.get("history") or []:
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        prompt = str(record.get("instruction", ""))
        if record.get("input"):
            prompt = f"{prompt}\n{record['input']}" if prompt else str(record["input"])
        out.append({"role": "user", "content": prompt})
        out.append({"role": "assistant", "content": record.get("output", "")})
    else:
        raise TokcalError(
            f"{where}: unknown record shape with keys {sorted(record)}; expected 'messages', "
            "'conversations' (sharegpt) or 'instruction'/'output' (alpaca)"
        )
    if not any(m["role"] == "assistant" and _text(m["content"]).strip() for m in out):
        raise TokcalError(f"{where} has no assistant answer; expected the answer to score in the last turn")
    return out


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """Render with the chat template and tokenise; label the assistant turns only.

    The supervised span of a turn is its content plus the end-of-sequence token that the
    template puts right after it, matched through the tokeniser's character offsets.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise TokcalError(
            "the tokenizer has no chat template; add one to the checkpoint's tokenizer_config.json "
            "or pass --chat-template FILE"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    spans: list[tuple[int, int]] = []
    cursor = 0
    eos = getattr(tokenizer, "eos_token", None) or ""
    for m in messages:
        content = _text(m["content"])
        if m["role"] != "assistant" or not content:
            continue
        at = text.find(content, cursor)
        if at < 0:
            raise TokcalError(
                "the chat template changed an assistant answer, so its tokens cannot be located; "
                "check the template or the record"
            )
        end = at + len(content)
        if eos and text.startswith(eos, end):
            end += len(eos)
        spans.append((at, end))
        cursor = end
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    offsets = enc["offset_mapping"]
    si = 0
    for i, (s, e) in enumerate(offsets):
        while si < len(spans) and s >= spans[si][1]:
            si += 1
        if si < len(spans) and spans[si][0] <= s < spans[si][1] and e > s:
            labels[i] = ids[i]
    return ids, labels


def load_examples(
    path: str | Path,
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    max_samples: int | None = None,
    progress: bool = False,
) -> list[Example]:
    """Read, render and tokenise an eval set (see the module docstring for shapes)."""
    return tokenize_records(read_records(path), tokenizer, chat_template=chat_template,
                            max_samples=max_samples, progress=progress, name=Path(path).name)


def tokenize_records(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    max_samples: int | None = None,
    progress: bool = False,
    name: str = "data",
) -> list[Example]:
    """Render and tokenise records already read with :func:`read_records`."""
    if max_samples is not None:
        records = records[:max_samples]
    it: Iterable[tuple[int, dict[str, Any]]] = enumerate(records)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(records), desc="tokenising", unit="rec", leave=False)
    out = []
    for i, r in it:
        where = f"{name}, record {i}"
        ids, labels = tokenize_conversation(tokenizer, to_messages(r, where), chat_template=chat_template)
        out.append(Example(ids, labels, r.get("id", i)))
    return out


def make_batches(
    examples: Sequence[Example],
    pad_id: int,
    *,
    max_tokens: int = 16384,
    max_rows: int = 64,
) -> list[dict[str, Any]]:
    """Length-sorted, right-padded batches of at most ``max_tokens`` padded tokens.

    Each batch has ``input_ids``, ``attention_mask``, ``labels`` (tensors) and
    ``sample_index`` (positions in ``examples``). Right padding keeps every real
    token's position the same as unpadded.
    """
    if max_tokens < 1 or max_rows < 1:
        raise TokcalError(f"expected max_tokens >= 1 and max_rows >= 1, got {max_tokens} and {max_rows}")
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = len(examples[cur[0]]) if cur else len(examples[i])
        if cur and ((len(cur) + 1) * longest > max_tokens or len(cur) >= max_rows):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return [collate([examples[i] for i in g], pad_id, np.asarray(g)) for g in groups]


def collate(rows: Sequence[Example], pad_id: int, index: np.ndarray) -> dict[str, Any]:
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r)
        ids[j, :n] = torch.tensor(r.input_ids)
        labels[j, :n] = torch.tensor(r.labels)
        mask[j, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "sample_index": index}
