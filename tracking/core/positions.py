"""Where the answers are: one decision per contiguous supervised span of ``labels``.

``labels`` (-100 outside the supervised tokens, as in SFT) -> :func:`find_answer_positions`
-> the batch row and position of each decision token; the logits one position earlier
predict it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from tokcal.core.spec import ResolvedSpec

#: The label value of tokens that are not supervised (Hugging Face's convention).
IGNORE_INDEX = -100


@dataclass
class AnswerPositions:
    """Decisions found in a batch.

    Attributes:
        rows, cols: batch row and position of each decision token (the logits that
            predict it sit at ``cols - 1``).
        gt: label index of each decision (from the label token).
        spans: supervised spans per row, and ``found`` decisions per row.
        missing: supervised spans with no decision token.
    """

    rows: np.ndarray
    cols: np.ndarray
    gt: np.ndarray
    spans: np.ndarray
    found: np.ndarray

    @property
    def missing(self) -> int:
        return int(self.spans.sum() - self.found.sum())

    def __len__(self) -> int:
        return len(self.rows)


def find_answer_positions(
    labels: np.ndarray | torch.Tensor,
    resolved: ResolvedSpec,
    input_ids: np.ndarray | torch.Tensor | None = None,
) -> AnswerPositions:
    """Find one decision per contiguous supervised span of ``labels``.

    In each span (labels != -100), the last position whose label is a decision token and
    follows the answer prefix. The prefix is checked on ``input_ids`` when given (it may
    sit in the prompt), else on ``labels``. Right and left padding both work.

    Example:
        >>> pos = find_answer_positions(batch["labels"], resolved)  # doctest: +SKIP
        >>> logits_at = logits[pos.rows, pos.cols - 1]  # doctest: +SKIP
    """
    lab = _to_numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"expected labels of shape (batch, seq), got {tuple(lab.shape)}")
    ref = lab if input_ids is None else _to_numpy(input_ids)
    if ref.shape != lab.shape:
        raise ValueError(f"expected input_ids of shape {tuple(lab.shape)}, got {tuple(ref.shape)}")
    b, t = lab.shape
    sup = lab != IGNORE_INDEX
    ids = np.asarray(resolved.all_ids, dtype=lab.dtype)
    cand = sup & np.isin(lab, ids)
    cand[:, 0] = False  # nothing predicts the first token
    anchor = resolved.anchor_ids()
    for j, tok in enumerate(reversed(anchor), start=1):
        ok = np.zeros_like(cand)
        ok[:, j:] = ref[:, :-j] == tok if j < t else False
        cand &= ok
    start = sup & ~np.concatenate([np.zeros((b, 1), dtype=bool), sup[:, :-1]], axis=1)
    spans = start.sum(axis=1)
    span_id = np.cumsum(start.ravel())
    flat = np.flatnonzero(cand.ravel())
    sid = span_id[flat]
    last = np.r_[sid[1:] != sid[:-1], True] if len(sid) else np.zeros(0, dtype=bool)
    chosen = flat[last]
    rows, cols = np.divmod(chosen, t)
    label_of = resolved.label_of_token()
    gt = np.fromiter((label_of[int(x)] for x in lab[rows, cols]), dtype=np.int64, count=len(rows))
    found = np.bincount(rows, minlength=b)
    return AnswerPositions(rows.astype(np.int64), cols.astype(np.int64), gt, spans, found)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class FoundDecisions:
    """The decisions of a tokenised eval set, found without a model.

    Attributes:
        sample_index: (N,) the example each decision is in.
        gt: (N,) label index of each decision.
        missing: supervised spans with no decision token.
        first_miss: the supervised tokens (at most 24) of the first answer without a
            decision, for a message; ``None`` when every answer has one.
        cols: (N,) position of each decision token in its example.
        answer_starts: (N,) first position of the supervised answer that holds it.
    """

    sample_index: np.ndarray
    gt: np.ndarray
    missing: int
    first_miss: list[int] | None = None
    cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    answer_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.gt)


def find_decisions(rows: Sequence[tuple[Sequence[int], Sequence[int]]], resolved: ResolvedSpec) -> FoundDecisions:
    """The decisions in ``(input_ids, labels)`` rows, one row per example, exactly as
    :func:`find_answer_positions` finds them in a batch: what scoring will score, known
    before any model loads.

    Example:
        >>> found = find_decisions([(e.input_ids, e.labels) for e in examples], resolved)  # doctest: +SKIP
        >>> len(found), found.missing  # doctest: +SKIP
        (120, 0)
    """
    index: list[np.ndarray] = []
    gts: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    missing, first_miss = 0, None
    for i, (ids, labels) in enumerate(rows):
        lab = np.asarray(labels, dtype=np.int64).reshape(1, -1)
        if lab.size == 0:
            continue
        pos = find_answer_positions(lab, resolved, np.asarray(ids, dtype=np.int64).reshape(1, -1))
        index.append(np.full(len(pos), i, dtype=np.int64))
        gts.append(pos.gt)
        cols.append(pos.cols)
        # An answer starts after the last unsupervised token before its decision.
        unsupervised = np.flatnonzero(lab[0] == IGNORE_INDEX)
        starts.append(np.array([unsupervised[unsupervised < c].max(initial=-1) + 1 for c in pos.cols], np.int64))
        missing += pos.missing
        if first_miss is None and pos.missing:
            first_miss = [int(x) for x in lab[0][lab[0] != IGNORE_INDEX][:24]]
    cat = (lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64))
    return FoundDecisions(cat(index), cat(gts), missing, first_miss, cat(cols), cat(starts))


def missing_decisions_message(resolved: ResolvedSpec, tokenizer: Any, first_miss: Sequence[int] | None,
                              fix: str = "Check labels/prefix in the spec.") -> str:
    """What to say when the answers hold no decision token: the tokens expected, after
    which prefix, and how one answer reads (the training callback and the command line
    say the same).

    Example:
        >>> missing_decisions_message(spec.resolve(tok), tok, [59, 8611])  # doctest: +SKIP
        "no decision token found in the eval answers: expected one of [['Yes'], ['No']] after '\\\\boxed{'; ..."
    """
    seen = tokenizer.decode(list(first_miss)) if first_miss else ""
    expected = [tokenizer.convert_ids_to_tokens(list(ids)) for ids in resolved.token_ids]
    return (f"no decision token found in the eval answers: expected one of {expected} after "
            f"{resolved.spec.prefix!r}; an answer reads {seen!r}. {fix}")
