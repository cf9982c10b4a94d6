"""Decisions the model writes itself: where it wrote the decision, and its metrics.

Teacher-forced scoring reads P(label) at the gold answer's decision position, after the gold
text before it. In generate mode the model writes its own answer from the generation prompt
(greedy); :func:`written_decision_at` finds where it wrote the decision prefix, and the label
probabilities are read at the next position, in the same pass. :class:`GeneratedDecisions`
holds one row per teacher-forced decision (same order), and :func:`generated_scalars` gives
their metrics with a ``gen_`` infix beside the teacher-forced ones.

Example:
    >>> written_decision_at([5, 6, 7, 9, 2], prompt_tail=[4], anchor=[6, 7])
    3
    >>> written_decision_at([5, 6], prompt_tail=[], anchor=[6, 7]) is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tokcal.core.spec import label_key


def written_decision_at(generated: Sequence[int], *, prompt_tail: Sequence[int], anchor: Sequence[int]) -> int | None:
    """The index in ``generated`` of the first token the model wrote right after the decision
    prefix (``anchor``: its token ids), or ``None`` when it never wrote the prefix followed by
    another token. With an empty anchor, the first generated token is the decision.

    Args:
        generated: the tokens the model generated.
        prompt_tail: the prompt's last tokens (the prefix may start in the prompt).
        anchor: the decision prefix's token ids.
    """
    n = len(anchor)
    tail = list(prompt_tail)[-n:] if n else []
    full = tail + list(generated)
    anchor = list(anchor)
    for j in range(len(generated)):
        p = len(tail) + j
        if p >= n and full[p - n:p] == anchor:
            return j
    return None


@dataclass
class GeneratedDecisions:
    """The model's own answers, one row per teacher-forced decision (in the same order).

    Attributes:
        probs: (N, K) probability of each label at the position after the prefix the model
            wrote; NaN where it wrote none.
        written: (N,) whether the model wrote the decision prefix and a token after it.
        label_written: (N,) whether that token is one of the labels' tokens.
        texts: the generated text per decision (``None``: not kept).
        lengths: (N,) tokens generated.
    """

    probs: np.ndarray
    written: np.ndarray
    label_written: np.ndarray
    texts: list[str] | None = None
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.written)

    def subset(self, keep: np.ndarray) -> "GeneratedDecisions":
        """These rows where ``keep`` (a boolean mask or an index array)."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        texts = None if self.texts is None else [self.texts[i] for i in idx]
        lengths = self.lengths[idx] if len(self.lengths) else self.lengths
        return GeneratedDecisions(self.probs[idx], self.written[idx], self.label_written[idx], texts, lengths)

    @classmethod
    def concat(cls, parts: Sequence["GeneratedDecisions"], k: int) -> "GeneratedDecisions":
        if not parts:
            return cls(np.zeros((0, k)), np.zeros(0, bool), np.zeros(0, bool), None)
        texts = None if any(p.texts is None for p in parts) else [t for p in parts for t in p.texts or []]
        return cls(np.concatenate([p.probs for p in parts]).reshape(-1, k),
                   np.concatenate([p.written for p in parts]).astype(bool),
                   np.concatenate([p.label_written for p in parts]).astype(bool), texts,
                   np.concatenate([p.lengths for p in parts]).astype(np.int64))

    def pred(self) -> np.ndarray:
        """(N,) the label the model gave the most probability after the prefix it wrote; -1
        where it wrote none."""
        out = np.full(len(self), -1, dtype=np.int64)
        if len(self):
            ok = self.written & np.isfinite(self.probs).all(axis=1)
            out[ok] = np.argmax(self.probs[ok], axis=1)
        return out

    def record_fields(self, i: int, labels: Sequence[str], gt: int, pred: int) -> dict[str, Any]:
        """The ``gen_*`` fields of decision ``i`` in a per-decision record (``pred``: its
        :meth:`pred`)."""
        rec: dict[str, Any] = {"gen_written": bool(self.written[i]), "gen_label_written": bool(self.label_written[i])}
        for j, name in enumerate(labels):
            v = float(self.probs[i, j])
            rec[f"gen_p_{label_key(name)}"] = v if np.isfinite(v) else None
        rec["gen_pred"] = labels[pred] if pred >= 0 else None
        rec["gen_correct"] = bool(pred == gt) if pred >= 0 else False
        if self.texts is not None:
            rec["gen_text"] = self.texts[i]
        return rec


def generated_scalars(gen: GeneratedDecisions, tf_probs: np.ndarray, gt: np.ndarray, labels: Sequence[str], *,
                      n_bins: int = 15, prefix: str = "eval_") -> dict[str, float]:
    """Metrics of the model's own answers beside the teacher-forced ones (``gen_`` infix).

    Over all N decisions: ``decision_gen_accuracy`` (a decision the model did not write counts
    as wrong, as an answer parser would count it), ``decision_gen_missing`` (how many it did not
    write), ``decision_gen_label_rate`` (share of the written ones whose token is a label) and
    ``decision_gen_agreement`` (share whose generated prediction equals the teacher-forced one).
    Over the written ones: ``decision_gen_prob_mass``, ``decision_gen_confidence``,
    ``decision_gen_ece`` and ``avg_gen_p_<label>``.

    Example:
        >>> g = GeneratedDecisions(np.array([[0.8, 0.1], [np.nan, np.nan]]), np.array([True, False]),
        ...                        np.array([True, False]))
        >>> s = generated_scalars(g, np.array([[0.7, 0.2], [0.3, 0.6]]), np.array([0, 1]), ["A", "B"])
        >>> s["eval_decision_gen_accuracy"], s["eval_decision_gen_missing"], s["eval_decision_gen_agreement"]
        (0.5, 1.0, 0.5)
    """
    from tokcal.core.metrics import calibration_errors, reliability_bins

    n = len(gen)
    nan = float("nan")
    pred = gen.pred()
    written = pred >= 0
    tf_pred = np.argmax(tf_probs, axis=1) if n else np.zeros(0, np.int64)
    s: dict[str, float] = {
        f"{prefix}decision_gen_accuracy": float(np.mean(pred == gt)) if n else nan,
        f"{prefix}decision_gen_missing": float(n - written.sum()),
        f"{prefix}decision_gen_agreement": float(np.mean(pred == tf_pred)) if n else nan,
        f"{prefix}decision_gen_label_rate": float(gen.label_written[written].mean()) if written.any() else nan,
    }
    p = gen.probs[written]
    if len(p):
        mass = p.sum(axis=1)
        q = p / np.where(mass > 0, mass, 1.0)[:, None]
        conf = q.max(axis=1)
        correct = (pred[written] == gt[written]).astype(float)
        s[f"{prefix}decision_gen_prob_mass"] = float(mass.mean())
        s[f"{prefix}decision_gen_confidence"] = float(p.max(axis=1).mean())
        s[f"{prefix}decision_gen_ece"] = float(calibration_errors(reliability_bins(conf, correct, n_bins))[0])
    else:
        for name in ("prob_mass", "confidence", "ece"):
            s[f"{prefix}decision_gen_{name}"] = nan
    for j, name in enumerate(labels):
        s[f"{prefix}avg_gen_p_{label_key(name)}"] = float(p[:, j].mean()) if len(p) else nan
    return s
