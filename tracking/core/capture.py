"""Collecting decisions batch by batch during an evaluation, across processes.

The Trainer callback feeds this from the logits its eval forward already computed; the
own-pass fallback feeds it from :mod:`tokcal.core.scoring`. :meth:`DecisionCapture.gather`
joins every process's batches in sampler order and drops the duplicates that
distributed samplers add to even out the last batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tokcal.core.distributed import all_gather
from tokcal.core.positions import IGNORE_INDEX, find_answer_positions
from tokcal.core.scores import DecisionScores, decision_probs
from tokcal.core.spec import ResolvedSpec


@dataclass
class _Batch:
    n_rows: int
    rows: np.ndarray  # batch row of each decision
    probs: np.ndarray  # (D, K)
    gt: np.ndarray
    missing_per_row: np.ndarray  # (n_rows,)
    inputs: list[list[int]] | None = None  # per decision, the tokens before it (when kept)


@dataclass
class DecisionCapture:
    """Per-process buffer of one evaluation's decisions.

    Example:
        >>> cap = DecisionCapture(resolved)  # doctest: +SKIP
        >>> cap.add_logits(out.logits, batch["labels"], batch["input_ids"])  # doctest: +SKIP
        >>> scores = cap.gather(num_samples=len(eval_dataset))  # doctest: +SKIP
    """

    resolved: ResolvedSpec
    keep_inputs: int = 0  # keep up to this many tokens before each decision (per-sample text)
    batches: list[_Batch] = field(default_factory=list)
    unlabeled_batches: int = 0
    first_miss: list[int] | None = None  # supervised tokens of the first answer without a decision

    def clear(self) -> None:
        self.batches.clear()
        self.unlabeled_batches = 0

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def labeled(self) -> int:
        """Batches that carried labels (the others are placeholders from :meth:`add_unlabeled`)."""
        return len(self.batches) - self.unlabeled_batches

    def add_unlabeled(self, n_rows: int) -> None:
        """Record a batch without labels: no decisions, but it keeps its place in sampler order,
        so the samples after it keep their indices and the padding duplicates stay past
        ``num_samples`` in :meth:`gather`."""
        empty = np.zeros(0, dtype=np.int64)
        k = len(self.resolved.labels)
        self.batches.append(_Batch(int(n_rows), empty, np.zeros((0, k)), empty, np.zeros(int(n_rows), dtype=np.int64)))
        self.unlabeled_batches += 1

    @torch.no_grad()
    def add_logits(self, logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor | None = None) -> None:
        """Record one batch from full (B, T, V) logits; reads only the answer positions."""
        pos = find_answer_positions(labels, self.resolved, input_ids)
        if len(pos):
            rows = torch.as_tensor(pos.rows, device=logits.device)
            cols = torch.as_tensor(pos.cols - 1, device=logits.device)
            probs = decision_probs(logits[rows, cols], self.resolved)
        else:
            probs = np.zeros((0, len(self.resolved.labels)))
        self.add_positions(pos, probs, labels, input_ids)

    def add_positions(
        self, pos: Any, probs: np.ndarray, labels: torch.Tensor | np.ndarray, input_ids: Any = None
    ) -> None:
        """Record one batch whose probabilities were computed elsewhere."""
        missing = pos.spans - pos.found
        if self.first_miss is None and missing.any():
            row = int(np.flatnonzero(missing)[0])
            lab = labels[row].detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels[row])
            self.first_miss = [int(x) for x in lab[lab != IGNORE_INDEX][:24]]
        inputs = None
        if self.keep_inputs and input_ids is not None:
            ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
            inputs = [ids[r, max(0, c - self.keep_inputs):c].tolist() for r, c in zip(pos.rows, pos.cols)]
        self.batches.append(_Batch(int(len(pos.spans)), pos.rows, probs, pos.gt, missing, inputs))

    def gather(self, num_samples: int | None = None) -> DecisionScores:
        """Join all processes' batches (every rank must call this) in sampler order.

        Batches are interleaved step-major, rank-minor (the order of accelerate's
        ``gather_for_metrics``), then rows past ``num_samples`` are dropped: those are
        the padding duplicates of the last batch. Decisions whose probabilities are not
        finite are left out and counted (``nonfinite``).
        """
        per_rank = all_gather(self.batches)
        labels = list(self.resolved.labels)
        k = len(labels)
        probs, gt, index = [], [], []
        inputs: list[list[int]] = []
        missing = 0
        offset = 0
        n_steps = max((len(b) for b in per_rank), default=0)
        for step in range(n_steps):
            for rank_batches in per_rank:
                if step >= len(rank_batches):
                    continue
                b = rank_batches[step]
                keep_rows = b.n_rows if num_samples is None else max(0, min(b.n_rows, num_samples - offset))
                sel = b.rows < keep_rows
                probs.append(b.probs[sel])
                gt.append(b.gt[sel])
                index.append(b.rows[sel] + offset)
                if b.inputs is not None:
                    inputs.extend(x for x, keep in zip(b.inputs, sel) if keep)
                missing += int(b.missing_per_row[:keep_rows].sum())
                offset += b.n_rows
        if not probs:
            return DecisionScores.empty(labels)
        scores = DecisionScores(
            labels,
            np.concatenate(probs).reshape(-1, k),
            np.concatenate(gt).astype(np.int64),
            np.concatenate(index).astype(np.int64),
            missing,
        )
        if self.keep_inputs:
            scores.inputs = inputs
        return scores.without_nonfinite()
