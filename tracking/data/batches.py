"""Length-sorted, right-padded batches within a token budget."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, overload

import numpy as np
import torch

from tokcal.core.positions import IGNORE_INDEX
from tokcal.data.conversation import Example
from tokcal.errors import TokcalError


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its end-of-sequence id, else 0 (a processor's tokenizer's)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def group_by_length(lengths: Sequence[int], *, max_tokens: int = 16384, max_rows: int = 64) -> list[list[int]]:
    """Indices grouped longest first, each group at most ``max_tokens`` padded tokens
    (rows x longest) and ``max_rows`` rows; a row longer than the budget is a group alone.

    Example:
        >>> group_by_length([3, 10, 4, 9], max_tokens=20)
        [[1, 3], [2, 0]]
    """
    if max_tokens < 1 or max_rows < 1:
        raise TokcalError(f"expected max_tokens >= 1 and max_rows >= 1, got {max_tokens} and {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and ((len(cur) + 1) * longest > max_tokens or len(cur) >= max_rows):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


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
    groups = group_by_length([len(e) for e in examples], max_tokens=max_tokens, max_rows=max_rows)
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


class LazyBatches(Sequence[dict[str, Any]]):
    """Batches built only when read: ``build(group)`` makes the batch of one index group.

    Iterating builds one batch at a time and keeps none, so image pixels are decoded per
    batch and memory stays flat over a large eval set. Slicing (``batches[rank::world]``)
    gives another lazy sequence.

    Example:
        >>> lazy = LazyBatches([[0, 1], [2]], lambda g: {"sample_index": np.asarray(g)})
        >>> len(lazy), lazy.rows, lazy[1]["sample_index"].tolist(), len(lazy[::2])
        (2, 3, [2], 1)
    """

    def __init__(self, groups: Sequence[Sequence[int]], build: Callable[[list[int]], dict[str, Any]]) -> None:
        self.groups = [list(g) for g in groups]
        self.build = build

    def __len__(self) -> int:
        return len(self.groups)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> LazyBatches: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | LazyBatches:
        if isinstance(i, slice):
            return LazyBatches(self.groups[i], self.build)
        return self.build(self.groups[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for g in self.groups:
            yield self.build(g)

    @property
    def rows(self) -> int:
        """How many samples the batches hold (without building them)."""
        return sum(len(g) for g in self.groups)


def count_rows(batches: Sequence[dict[str, Any]]) -> int:
    """Samples in ``batches``; a :class:`LazyBatches` is counted without building it."""
    if isinstance(batches, LazyBatches):
        return batches.rows
    return sum(len(b["sample_index"]) for b in batches)


def pad_rows(rows: Sequence[dict[str, torch.Tensor]], labels: Sequence[Sequence[int]], pad_id: int,
             index: np.ndarray, *, padding_side: str = "right") -> dict[str, Any]:
    """One batch from per-row model inputs (each the output of a processor for one record).

    Per-token tensors (shape ``(1, T)``: ``input_ids``, ``attention_mask``,
    ``mm_token_type_ids``, ...) are padded to the longest row (``pad_id`` for
    ``input_ids``, 0 otherwise) on ``padding_side``; every other tensor (``pixel_values``,
    ``image_grid_thw``, video keys, ...) is concatenated along its first dimension in row
    order, as the processor does for a batch. Every key reaches the batch.
    """
    if padding_side not in ("right", "left"):
        raise TokcalError(f"expected padding_side 'right' or 'left', got {padding_side!r}")
    lengths = [int(r["input_ids"].shape[-1]) for r in rows]
    t = max(lengths)
    per_token = {k for r, n in zip(rows, lengths) for k, v in r.items()
                 if isinstance(v, torch.Tensor) and v.dim() == 2 and tuple(v.shape) == (1, n)
                 and not v.is_floating_point()}
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        if k in per_token:
            fill = pad_id if k == "input_ids" else 0
            ref = next(r[k] for r in rows if k in r)
            mat = torch.full((len(rows), t), fill, dtype=ref.dtype)
            for j, (r, n) in enumerate(zip(rows, lengths)):
                seg = slice(0, n) if padding_side == "right" else slice(t - n, t)
                mat[j, seg] = r[k][0]
            out[k] = mat
        else:
            parts = [r[k] for r in rows if k in r and r[k] is not None]
            if parts and all(isinstance(p, torch.Tensor) for p in parts):
                out[k] = torch.cat(parts, dim=0)
            elif parts:
                out[k] = [x for p in parts for x in (p if isinstance(p, (list, tuple)) else [p])]
    lab = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)
    for j, (row_labels, n) in enumerate(zip(labels, lengths)):
        seg = slice(0, n) if padding_side == "right" else slice(t - n, t)
        lab[j, seg] = torch.tensor(list(row_labels), dtype=torch.long)
    out["labels"] = lab
    out["sample_index"] = index
    return out
