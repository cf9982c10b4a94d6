"""Reading eval records and normalising them to chat ``messages``.

Records in JSON or JSONL, in one of three shapes:

- ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]``
- LLaMA-Factory alpaca: ``instruction``, ``input``, ``output`` (optional ``system``, ``history``)
- LLaMA-Factory sharegpt: ``conversations`` with ``from``/``value``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

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
    return read_located(path)[0]


def read_located(path: str | Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """:func:`read_records`, and the line each record starts on (``None`` when the file
    does not tell, e.g. ``{"data": [...]}``), so messages can name the line.

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        >>> _ = f.write('{"id": 1}\\n\\n{"id": 2}\\n'); f.close()
        >>> read_located(f.name)
        ([{'id': 1}, {'id': 2}], [1, 3])
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
            records = _check_objects(records, p)
            return records, _array_lines(text, len(records)) if isinstance(data, list) else None
    records, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TokcalError(f"{p}, line {n}: not valid JSON ({exc.msg}); expected one record per line") from exc
        if not isinstance(records[-1], dict):
            raise TokcalError(f"{p}, line {n}: expected a JSON object, got {json_type(records[-1])}")
        lines.append(n)
    if not records:
        raise TokcalError(f"data file {p} has no records")
    return records, lines


def _array_lines(text: str, n: int) -> list[int] | None:
    """The line on which each of the ``n`` elements of a top-level JSON array starts."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    if text[i:i + 1] != "[":
        return None
    i += 1
    starts: list[int] = []
    while len(starts) < n:
        while i < len(text) and text[i] in ws + ",":
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        starts.append(i)
        try:
            _, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:  # already parsed once; give no lines rather than wrong ones
            return None
    if len(starts) != n:
        return None
    lines, line, pos = [], 1, 0
    for s in starts:
        line += text.count("\n", pos, s)
        pos = s
        lines.append(line)
    return lines


def record_where(name: str, index: int, lines: Sequence[int] | None = None) -> str:
    """How messages name a record: ``eval.jsonl, line 7, record 5`` (the line when known).

    Example:
        >>> record_where("eval.jsonl", 5, [1, 2, 3, 4, 6, 7])
        'eval.jsonl, line 7, record 5'
    """
    if lines is not None and index < len(lines):
        return f"{name}, line {lines[index]}, record {index}"
    return f"{name}, record {index}"


def sample_id(record: dict[str, Any], index: int, where: str = "record") -> Any:
    """The record's ``id`` (text or a whole number), else its position in the file.

    Raises:
        TokcalError: an ``id`` of another type (``null``, a list, ...).
    """
    if "id" not in record:
        return index
    rid = record["id"]
    if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
        return rid
    raise TokcalError(f"{where}: expected 'id' as text or a whole number, got {json_type(rid)}; "
                      "fix it or drop 'id' to number the records by position")


def _check_objects(records: Any, p: Path) -> list[dict[str, Any]]:
    if not isinstance(records, list):
        raise TokcalError(f"{p}: expected a list of records, got {json_type(records)}")
    if not records:
        raise TokcalError(f"data file {p} has no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise TokcalError(f"{p}, record {i}: expected a JSON object, got {json_type(r)}")
    return records


def json_type(value: Any) -> str:
    """The JSON name of a value's type (``null``, ``number``, ``object`` ...), for messages.

    Example:
        >>> json_type(None), json_type(3), json_type([1]), json_type({"a": 1})
        ('null', 'number', 'array', 'object')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def message_text(content: Any) -> str:
    """Plain text of a message's content (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    if content is None:
        return ""
    raise TokcalError(f"expected message content as text or a list of parts, got {json_type(content)}")


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
        raise TokcalError(f"{where}: expected a JSON object, got {json_type(record)}")
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
    if not isinstance(msgs, list):
        raise TokcalError(f"{where}: expected 'messages' as a list of {{role, content}} objects, "
                          f"got {json_type(msgs)}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise TokcalError(f"{where}, message {i}: expected a {{role, content}} object, got {json_type(m)}")
        if not isinstance(m.get("role"), str):
            raise TokcalError(f"{where}, message {i}: expected 'role' as text, got {json_type(m.get('role'))}")
        if "content" in m and m["content"] is None:
            raise TokcalError(f"{where}, message {i}: expected 'content' as text or a list of parts, got null")
    return [{"role": m["role"], "content": m.get("content", "")} for m in msgs]


def _system(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    system = record.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise TokcalError(f"{where}: expected 'system' as text, got {json_type(system)}")
    return [{"role": "system", "content": system}]


def _from_sharegpt(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise TokcalError(f"{where}: expected 'conversations' as a list of {{from, value}} objects, "
                          f"got {json_type(turns)}")
    out = _system(record, where)
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            raise TokcalError(f"{where}, turn {i}: expected a {{from, value}} object, got {json_type(m)}")
        if not isinstance(m.get("from"), str):
            raise TokcalError(f"{where}, turn {i}: expected 'from' as text, got {json_type(m.get('from'))}")
        role = _SHAREGPT_ROLES.get(m["from"].lower())
        if role is None:
            raise TokcalError(
                f"{where}, turn {i}: unknown sharegpt role {m['from']!r}; expected one of {sorted(_SHAREGPT_ROLES)}"
            )
        if "value" in m and m["value"] is None:
            raise TokcalError(f"{where}, turn {i}: expected 'value' as text, got null")
        out.append({"role": role, "content": m.get("value", "")})
    return out


def _from_alpaca(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    for key in ("instruction", "input", "output"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise TokcalError(f"{where}: expected {key!r} as text, got {json_type(record[key])}")
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
        raise TokcalError(f"{where}: expected content as text or a list of parts, got {json_type(content)}")
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise TokcalError(f"{where}: expected each content part as an object with a 'type', got {part!r:.60}")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise TokcalError(f"{where}: expected a text part's 'text' as text, got {json_type(part.get('text'))}")
