"""Where the answers are: one decision per contiguous supervised span of ``labels``.

``labels`` (-100 outside the supervised tokens, as in SFT) -> :func:`find_answer_positions`
-> the batch row and position of each decision token; the logits one position earlier
predict it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
