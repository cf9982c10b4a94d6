"""Reading eval records and normalising them to chat ``messages``.

Records in JSON or JSONL, in one of three shapes:

- ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]``
- LLaMA-Factory alpaca: ``instruction``, ``input``, ``output`` (optional ``system``, ``history``)
- LLaMA-Factory sharegpt: ``conversations`` with ``from``/``value``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokcal.errors import TokcalError
from tokcal.io import read_text

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON array (or ``{"data": [...]}``) or a JSONL file of records.

    Raises:
        TokcalError: the file is missing, empty, or a line is not a JSON object (the
            message gives the line number).
    """
    p = Path(path)
    text = read_text(p, "data file")
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
            return _check_objects(records, p)
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


def _check_objects(records: Any, p: Path) -> list[dict[str, Any]]:
    if not isinstance(records, list):
        raise TokcalError(f"{p}: expected a list of records, got {type(records).__name__}")
    if not records:
        raise TokcalError(f"data file {p} has no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise TokcalError(f"{p}, record {i}: expected a JSON object, got {type(r).__name__}")
    return records


def message_text(content: Any) -> str:
    """Plain text of a message's content (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    if content is None:
        return ""
    raise TokcalError(f"expected message content as text or a list of parts, got {type(content).__name__}")


def to_messages(record: dict[str, Any], where: str = "record") -> list[dict[str, Any]]:
    """Normalise a record in any supported shape to chat ``messages``.

    Raises:
        TokcalError: an unknown shape, a field of the wrong type, or no assistant answer
            (the message names the record and what was expected).

    Example:
        >>> to_messages({"instruction": "Review:", "input": "Good.", "output": "\\\\boxed{Accept}"})
        [{'role': 'user', 'content': 'Review:\\nGood.'}, {'role': 'assistant', 'content': '\\\\boxed{Accept}'}]
    """
    if not isinstance(record, dict):
        raise TokcalError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        out = _from_messages(record, where)
    elif "conversations" in record:
        out = _from_sharegpt(record, where)
    elif "instruction" in record or "output" in record:
        out = _from_alpaca(record, where)
    else:
        raise TokcalError(
            f"{where}: unknown record shape with keys {sorted(record)}; expected 'messages', "
            "'conversations' (sharegpt) or 'instruction'/'output' (alpaca)"
        )
    for i, m in enumerate(out):
        _check_content(m["content"], f"{where}, message {i}")
    if not any(m["role"] == "assistant" and message_text(m["content"]).strip() for m in out):
        raise TokcalError(f"{where} has no assistant answer; expected the answer to score in the last turn")
    return out


def _from_messages(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    msgs = record["messages"]
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
        raise TokcalError(f"{where}: expected 'messages' as a list of {{role, content}} objects")
    return [{"role": m["role"], "content": m.get("content", "")} for m in msgs]


def _system(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    system = record.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise TokcalError(f"{where}: expected 'system' as text, got {type(system).__name__}")
    return [{"role": "system", "content": system}]


def _from_sharegpt(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not all(isinstance(m, dict) for m in turns):
        raise TokcalError(f"{where}: expected 'conversations' as a list of {{from, value}} objects")
    out = _system(record, where)
    for m in turns:
        role = _SHAREGPT_ROLES.get(str(m.get("from", "")).lower())
        if role is None:
            raise TokcalError(
                f"{where}: unknown sharegpt role {m.get('from')!r}; expected one of {sorted(_SHAREGPT_ROLES)}"
            )
        out.append({"role": role, "content": m.get("value", "")})
    return out


def _from_alpaca(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    for key in ("instruction", "input", "output"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise TokcalError(f"{where}: expected {key!r} as text, got {type(record[key]).__name__}")
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history):
        raise TokcalError(f"{where}: expected 'history' as a list of [question, answer] pairs of text")
    out = _system(record, where)
    for q, a in history:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    prompt = record.get("instruction") or ""
    if record.get("input"):
        prompt = f"{prompt}\n{record['input']}" if prompt else record["input"]
    out.append({"role": "user", "content": prompt})
    out.append({"role": "assistant", "content": record.get("output") or ""})
    return out


def _check_content(content: Any, where: str) -> None:
    """Text, nothing, or a list of typed parts (``{"type": "text", "text": ...}``, images ...)."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise TokcalError(f"{where}: expected content as text or a list of parts, got {type(content).__name__}")
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise TokcalError(f"{where}: expected each content part as an object with a 'type', got {part!r:.60}")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise TokcalError(f"{where}: expected a text part's 'text' as text, got {part.get('text')!r:.60}")
