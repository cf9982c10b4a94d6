"""Running a model over batches and asking it for logits at the answer positions only.

Flow: ``labels`` -> :func:`~tokcal.core.positions.find_answer_positions` -> logits at those
positions (``logits_to_keep``) -> :func:`~tokcal.core.scores.decision_probs` ->
:class:`~tokcal.core.scores.DecisionScores`.
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from tokcal.core.distributed import Dist
from tokcal.core.positions import AnswerPositions, find_answer_positions
from tokcal.core.scores import DecisionScores, decision_probs
from tokcal.core.spec import ResolvedSpec

log = logging.getLogger(__name__)

# Batch keys that are bookkeeping, never model inputs.
META_KEYS = ("labels", "sample_index")

_state = threading.local()


def in_own_forward() -> bool:
    """Whether this thread is inside a forward that tokcal's scorer runs (a forward hook that
    reads the Trainer's eval forwards ignores these)."""
    return getattr(_state, "depth", 0) > 0


@contextmanager
def _own_forward() -> Iterator[None]:
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _supports_row_mask() -> bool:
    """transformers >= 5.x with ``slice_logits_to_keep`` takes a boolean (B, T) mask."""
    try:
        from transformers import modeling_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return hasattr(modeling_utils, "slice_logits_to_keep")


class _LogitsAtPositions:
    """Calls a model so that it computes logits only at the needed positions."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.mode = "mask" if _supports_row_mask() else "union"
        if not _accepts_logits_to_keep(model):
            self.mode = "full"
            warnings.warn(
                f"{type(model).__name__}.forward takes no logits_to_keep; computing full "
                "logits (more memory)",
                stacklevel=3,
            )

    def __call__(self, inputs: dict[str, Any], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(D, V) logits predicting the tokens at (rows, cols)."""
        with _own_forward():
            return self._logits_at(inputs, rows, cols)

    def forward_only(self, inputs: dict[str, Any]) -> None:
        """Run the model on a batch whose logits nobody needs, the same way as a batch with
        decisions (so every rank takes the same number of forwards, probing included)."""
        b, t = inputs["input_ids"].shape
        dev = inputs["input_ids"].device
        with _own_forward():
            self._logits_at(inputs, torch.zeros(1, dtype=torch.long, device=dev),
                            torch.full((1,), max(t - 1, 1), dtype=torch.long, device=dev))

    def _logits_at(self, inputs: dict[str, Any], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        b, t = inputs["input_ids"].shape
        prev = cols - 1
        if self.mode == "mask":
            mask = torch.zeros((b, t), dtype=torch.bool, device=rows.device)
            mask[rows, prev] = True
            out = self.model(**inputs, logits_to_keep=mask).logits
            if out.dim() == 2 and out.shape[0] == len(rows):
                # Flattened in row-major order of the mask; map back to our order.
                order = torch.argsort(rows * t + prev)
                res = torch.empty_like(out)
                res[order] = out
                return res
            self.mode = "union"  # this model slices differently; fall through
        if self.mode == "union":
            uniq, inv = torch.unique(prev, return_inverse=True)
            out = self.model(**inputs, logits_to_keep=uniq).logits
            if out.dim() == 3 and out.shape[:2] == (b, len(uniq)):
                return out[rows, inv]
            self.mode = "full"
            warnings.warn("the model ignored logits_to_keep; computing full logits", stacklevel=3)
        out = self.model(**inputs).logits
        return out[rows, prev]


@torch.inference_mode()
def score_batches(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    resolved: ResolvedSpec,
    *,
    device: torch.device | str | None = None,
    lockstep: bool | None = None,
) -> Iterator[tuple[dict[str, Any], AnswerPositions | None, np.ndarray]]:
    """Per batch: the batch, its answer positions and their (D, K) label probabilities.

    The model runs in eval mode (restored afterwards) and is asked for logits at the answer
    positions only; ``sample_index`` and ``labels`` never reach the model. A batch without
    ``labels`` yields ``None`` positions and no probabilities. Shared by :func:`score` and
    the callback's own-pass fallback.

    Args:
        lockstep: run the model on every batch, also one without a decision or without
            labels (its logits are thrown away). Under DeepSpeed ZeRO-3 or FSDP the forward
            gathers the parameters from every rank, so a rank that skipped one would leave
            the others waiting in a collective it never joins. Default: whenever a process
            group of more than one process is active. Without it such batches cost nothing.

    Example:
        >>> for batch, pos, probs in score_batches(model, batches, spec.resolve(tok)):  # doctest: +SKIP
        ...     print(pos.rows, probs[:, 0])
    """
    lockstep = Dist().on if lockstep is None else lockstep
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    call = _LogitsAtPositions(model)
    no_decision = np.zeros((0, len(resolved.labels)))
    try:
        for batch in batches:
            labels = batch.get("labels")
            pos = None if labels is None else find_answer_positions(labels, resolved, batch.get("input_ids"))
            probs = no_decision
            if (pos is not None and len(pos)) or lockstep:
                inputs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v)
                          for k, v in batch.items() if k not in META_KEYS}
                if pos is not None and len(pos):
                    rows = torch.as_tensor(pos.rows, device=dev)
                    cols = torch.as_tensor(pos.cols, device=dev)
                    probs = decision_probs(call(inputs, rows, cols), resolved)
                else:
                    call.forward_only(inputs)
            yield batch, pos, probs
    finally:
        model.train(was_training)


def score(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    resolved: ResolvedSpec,
    *,
    device: torch.device | str | None = None,
    progress: Any = None,
) -> DecisionScores:
    """Score decisions with a model, without a Trainer.

    Each batch is a dict of model inputs plus ``labels`` (-100 outside answers) and
    ``sample_index`` (dataset index per row). Logits are computed at answer positions
    only when the model takes ``logits_to_keep``.

    Args:
        model: a causal LM (``model(**inputs).logits``).
        batches: e.g. from :func:`tokcal.data.conversation.make_batches`.
        resolved: the spec bound to the model's tokenizer.
        device: where to run; defaults to the model's device.
        progress: optional tqdm-like object; ``update(n_rows)`` is called per batch.

    Example:
        >>> scores = score(model, make_batches(examples, pad_id), spec.resolve(tok))  # doctest: +SKIP
        >>> scores.metrics().scalars["eval_decision_accuracy"]  # doctest: +SKIP
    """
    parts: list[DecisionScores] = []
    for batch, pos, probs in score_batches(model, batches, resolved, device=device):
        n_rows = len(batch["input_ids"])
        if pos is not None:
            index = np.asarray(batch.get("sample_index", np.arange(n_rows)))
            parts.append(DecisionScores(list(resolved.labels), probs, pos.gt, index[pos.rows], pos.missing))
        if progress is not None:
            progress.update(n_rows)
    return DecisionScores.concat(parts, resolved.labels).sorted()
