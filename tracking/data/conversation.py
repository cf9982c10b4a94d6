"""Rendering a conversation with the chat template and tokenising it as SFT training does.

Each record is rendered with the tokenizer's chat template and tokenised whole; labels
cover the assistant turns only (-100 elsewhere), as in supervised fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from tokcal.core.positions import IGNORE_INDEX
from tokcal.data.records import message_text, record_where, sample_id, to_messages
from tokcal.errors import TokcalError, first_line


@dataclass
class Example:
    """One tokenised record."""

    input_ids: list[int]
    labels: list[int]
    sample_id: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None, where: str = "record"
) -> tuple[list[int], list[int]]:
    """Render with the chat template and tokenise; label the assistant turns only.

    The supervised span of a turn is its content plus the end-of-sequence token that the
    template puts right after it, matched through the tokeniser's character offsets.

    Raises:
        TokcalError: no chat template, or the template fails on this record (naming ``where``).
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise TokcalError(
            "the tokenizer has no chat template; add one to the checkpoint's tokenizer_config.json "
            "or pass --chat-template FILE"
        )
    text = render_chat(tokenizer, messages, template, where)
    return tokenize_rendered(tokenizer, text, messages)


def render_chat(renderer: Any, messages: list[dict[str, Any]], template: str | None, where: str) -> str:
    """``renderer.apply_chat_template(messages, tokenize=False)`` (a tokenizer or processor);
    a template that fails on this record (``raise_exception``, a missing key) is a one-line
    error naming the record."""
    import jinja2

    try:
        return renderer.apply_chat_template(messages, tokenize=False, chat_template=template)
    except (jinja2.TemplateError, TypeError) as exc:  # TypeError: e.g. text + a list of parts in the template
        raise TokcalError(f"{where}: the chat template cannot render this record "
                          f"({first_line(exc, with_type=True)}); check its roles and fields") from exc


def tokenize_rendered(tokenizer: Any, text: str, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Tokenise a conversation already rendered with its chat template; label the
    assistant turns only (their content plus the end-of-sequence token right after it).

    Example:
        >>> ids, labels = tokenize_rendered(tok, text, messages)  # doctest: +SKIP
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    eos = getattr(tokenizer, "eos_token", None) or ""
    for m in messages:
        content = message_text(m["content"])
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


def tokenize_records(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    max_samples: int | None = None,
    progress: bool = False,
    name: str = "data",
    lines: Sequence[int] | None = None,
) -> list[Example]:
    """Render and tokenise records already read with :func:`read_records` (``lines``: the
    line each starts on, to name it in messages)."""
    if max_samples is not None:
        records = records[:max_samples]
    it: Iterable[tuple[int, dict[str, Any]]] = enumerate(records)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(records), desc="tokenising", unit="rec", leave=False)
    out = []
    for i, r in it:
        where = record_where(name, i, lines)
        # Text parts joined into one string: the form a text model's chat template renders.
        messages = [{**m, "content": message_text(m["content"])} for m in to_messages(r, where)]
        ids, labels = tokenize_conversation(tokenizer, messages, chat_template=chat_template, where=where)
        out.append(Example(ids, labels, sample_id(r, i, where)))
    return out


def check_chat_template(template: str, where: str = "chat template") -> None:
    """A Jinja chat template that parses, or a one-line error naming the line.

    Example:
        >>> check_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
        >>> check_chat_template("{% for m in messages %}")
        Traceback (most recent call last):
        ...
        tokcal.errors.TokcalError: chat template is not a valid Jinja template (line 1: Unexpected end of template. ...
    """
    import jinja2

    if not template.strip():
        raise TokcalError(f"{where} is empty; expected a Jinja chat template")
    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        msg = str(exc.message or exc).splitlines()[0]
        raise TokcalError(f"{where} is not a valid Jinja template (line {exc.lineno}: {msg}); fix it or "
                          "drop --chat-template to use the tokenizer's") from exc
