"""Length-sorted, right-padded batches within a token budget."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from tracking.core.positions import IGNORE_INDEX
from tracking.data.conversation import Example
from tracking.errors import TokcalError


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its end-of-sequence id, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


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
