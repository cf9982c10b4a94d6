"""The result of scoring an evaluation: label probabilities per decision.

:func:`decision_probs` turns logits at answer positions into label probabilities;
:class:`DecisionScores` holds them with the truth and sample ids, and gives metrics and
per-decision records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from tokcal.core.generated import GeneratedDecisions, generated_scalars
from tokcal.core.identity import eval_set_identity
from tokcal.core.metrics import DecisionMetrics, compute_metrics
from tokcal.core.spec import ResolvedSpec, label_key


def decision_probs(logits: torch.Tensor, resolved: ResolvedSpec) -> np.ndarray:
    """(D, V) logits at answer positions -> (D, K) label probabilities (variants summed).

    Log-softmax in float32 over the whole vocabulary, whatever the model's dtype.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    cols = [torch.logsumexp(logp[:, list(ids)], dim=-1) for ids in resolved.token_ids]
    return torch.stack(cols, dim=-1).exp().double().cpu().numpy()


@dataclass
class DecisionScores:
    """Per-decision results of an evaluation.

    Attributes:
        labels: the spec's labels.
        probs: (N, K) probability of each label at the answer position.
        gt: (N,) true label index.
        sample_index: (N,) index of the sample (record) each decision came from.
        missing: supervised spans where no decision token was found.
        sample_ids: optional id per sample index (from the data file).
        nonfinite: decisions left out because their probabilities were not finite (NaN or
            inf logits, e.g. an fp16 model gone unstable); see :meth:`without_nonfinite`.
    """

    labels: list[str]
    probs: np.ndarray
    gt: np.ndarray
    sample_index: np.ndarray
    missing: int = 0
    sample_ids: Sequence[Any] | None = None
    inputs: list[list[int]] | None = field(default=None, repr=False)  # tokens before each decision
    nonfinite: int = 0
    #: (sample_index, gt) of the decisions left out as not finite: still part of the eval set
    left_out: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    #: the model's own answers, one row per decision (generate mode); ``None`` otherwise
    generated: GeneratedDecisions | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, labels: Sequence[str]) -> "DecisionScores":
        k = len(labels)
        return cls(list(labels), np.zeros((0, k)), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: Sequence["DecisionScores"], labels: Sequence[str]) -> "DecisionScores":
        if not parts:
            return cls.empty(labels)
        return cls(
            list(labels),
            np.concatenate([p.probs for p in parts]).reshape(-1, len(labels)),
            np.concatenate([p.gt for p in parts]).astype(np.int64),
            np.concatenate([p.sample_index for p in parts]).astype(np.int64),
            int(sum(p.missing for p in parts)),
            parts[0].sample_ids,
            nonfinite=int(sum(p.nonfinite for p in parts)),
            left_out=_joined([p.left_out for p in parts]),
            generated=None if any(p.generated is None for p in parts)
            else GeneratedDecisions.concat([p.generated for p in parts if p.generated is not None], len(labels)),
        )

    def __len__(self) -> int:
        return len(self.gt)

    def sorted(self) -> "DecisionScores":
        """Ordered by sample index (stable), so results do not depend on batching."""
        o = np.argsort(self.sample_index, kind="stable")
        return DecisionScores(self.labels, self.probs[o], self.gt[o], self.sample_index[o],
                              self.missing, self.sample_ids, nonfinite=self.nonfinite, left_out=self.left_out,
                              generated=None if self.generated is None else self.generated.subset(o))

    def without_nonfinite(self) -> "DecisionScores":
        """These scores less the decisions whose probabilities are not finite (counted in
        ``nonfinite``), so one NaN row does not take the whole evaluation with it.

        Example:
            >>> s = DecisionScores(["A", "B"], np.array([[0.9, 0.1], [np.nan, np.nan]]), np.array([0, 1]),
            ...                    np.array([0, 1])).without_nonfinite()
            >>> len(s), s.nonfinite
            (1, 1)
        """
        bad = ~np.isfinite(self.probs).all(axis=1) if self.probs.size else np.zeros(len(self), bool)
        if not bad.any():
            return self
        keep = ~bad
        inputs = None if self.inputs is None else [x for x, k in zip(self.inputs, keep) if k]
        return DecisionScores(self.labels, self.probs[keep], self.gt[keep], self.sample_index[keep], self.missing,
                              self.sample_ids, inputs, nonfinite=self.nonfinite + int(bad.sum()),
                              left_out=_joined([self.left_out, (self.sample_index[bad], self.gt[bad])]),
                              generated=None if self.generated is None else self.generated.subset(keep))

    def identity(self) -> dict[str, Any]:
        """The eval set's identity (:func:`~tokcal.core.identity.eval_set_identity`) over every
        decision found, those left out as not finite included: one NaN row does not make the
        same eval set look like another.

        Example:
            >>> s = DecisionScores(["A", "B"], np.array([[0.9, 0.1], [np.nan, np.nan]]), np.array([0, 1]),
            ...                    np.array([0, 1]))
            >>> s.without_nonfinite().identity() == s.identity()
            True
        """
        si, gt = self.sample_index, self.gt
        if self.left_out is not None:
            si, gt = np.concatenate([si, self.left_out[0]]), np.concatenate([gt, self.left_out[1]])
        return eval_set_identity(si, gt, self.labels)

    def nonfinite_message(self, where: str) -> str:
        """The warning for decisions left out as not finite (``where``: which evaluation)."""
        total = len(self) + self.nonfinite
        return (f"{where}: {self.nonfinite} of {total} decisions had non-finite probabilities (NaN or inf in the "
                f"logits, e.g. float16 overflow) and are left out of the metrics (counted in decision_nonfinite); "
                f"the other {len(self)} are scored as usual")

    def metrics(self, *, n_bins: int = 15, hist_bins: int = 20, prefix: str = "eval_") -> DecisionMetrics:
        """Every metric (:func:`~tokcal.core.metrics.compute_metrics`); in generate mode also
        those of the model's own answers (:func:`~tokcal.core.generated.generated_scalars`)."""
        m = compute_metrics(self.probs, self.gt, self.labels, n_missing=self.missing,
                            n_nonfinite=self.nonfinite, n_bins=n_bins, hist_bins=hist_bins, prefix=prefix)
        if self.generated is not None:
            m.scalars.update(generated_scalars(self.generated, self.probs, self.gt, self.labels, n_bins=n_bins,
                                               prefix=prefix))
        return m

    def records(self) -> list[dict[str, Any]]:
        """One dict per decision: ``sample_id``, ``index`` (the sample's position in the
        eval set), ``p_<label>``..., ``gt``, ``pred``, ``correct``, ``mass``, ``confidence``
        (and ``turn`` when a sample has several)."""
        keys = [label_key(x) for x in self.labels]
        counts = np.bincount(self.sample_index) if len(self) else np.zeros(0, np.int64)
        seen: dict[int, int] = {}
        gen_pred = self.generated.pred() if self.generated is not None else None
        out = []
        for i in range(len(self)):
            si = int(self.sample_index[i])
            p = self.probs[i]
            pred = int(np.argmax(p))
            sid = self.sample_ids[si] if self.sample_ids is not None else si
            rec: dict[str, Any] = {"sample_id": sid, "index": si}
            if counts[si] > 1:
                rec["turn"] = seen.get(si, 0)
                seen[si] = rec["turn"] + 1
            rec.update({f"p_{k}": float(p[j]) for j, k in enumerate(keys)})
            rec.update(
                gt=self.labels[int(self.gt[i])],
                pred=self.labels[pred],
                correct=bool(pred == int(self.gt[i])),
                mass=float(p.sum()),
                confidence=float(p[pred]),
            )
            if self.generated is not None:
                rec.update(self.generated.record_fields(i, self.labels, int(self.gt[i]), int(gen_pred[i])))
            out.append(rec)
        return out


def _joined(parts: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> tuple[np.ndarray, np.ndarray] | None:
    """The (sample_index, gt) pairs of several parts end to end (``None`` when there are none)."""
    have = [p for p in parts if p is not None and len(p[0])]
    if not have:
        return None
    return (np.concatenate([p[0] for p in have]).astype(np.int64), np.concatenate([p[1] for p in have]).astype(np.int64))
