"""Where the answer is, and the probability of each decision label there.

Flow: ``labels`` -> :func:`find_answer_positions` -> logits at those positions ->
:func:`decision_probs` -> :class:`DecisionScores`. :func:`score` runs a model over batches
and asks it for logits at the answer positions only.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from tracking.metrics import DecisionMetrics, compute_metrics
from tracking.spec import ResolvedSpec, label_key

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Batch keys that are bookkeeping, never model inputs.
META_KEYS = ("labels", "sample_index")


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
    """

    labels: list[str]
    probs: np.ndarray
    gt: np.ndarray
    sample_index: np.ndarray
    missing: int = 0
    sample_ids: Sequence[Any] | None = None
    inputs: list[list[int]] | None = field(default=None, repr=False)  # tokens before each decision

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
        )

    def __len__(self) -> int:
        return len(self.gt)

    def sorted(self) -> "DecisionScores":
        """Ordered by sample index (stable), so results do not depend on batching."""
        o = np.argsort(self.sample_index, kind="stable")
        return DecisionScores(self.labels, self.probs[o], self.gt[o], self.sample_index[o],
                              self.missing, self.sample_ids)

    def metrics(self, *, n_bins: int = 15, hist_bins: int = 20, prefix: str = "eval_") -> DecisionMetrics:
        return compute_metrics(self.probs, self.gt, self.labels, n_missing=self.missing,
                               n_bins=n_bins, hist_bins=hist_bins, prefix=prefix)

    def records(self) -> list[dict[str, Any]]:
        """One dict per decision: ``sample_id``, ``p_<label>``..., ``gt``, ``pred``,
        ``correct``, ``mass``, ``confidence`` (and ``turn`` when a sample has several)."""
        keys = [label_key(x) for x in self.labels]
        counts = np.bincount(self.sample_index) if len(self) else np.zeros(0, np.int64)
        seen: dict[int, int] = {}
        out = []
        for i in range(len(self)):
            si = int(self.sample_index[i])
            p = self.probs[i]
            pred = int(np.argmax(p))
            sid = self.sample_ids[si] if self.sample_ids is not None else si
            rec: dict[str, Any] = {"sample_id": sid}
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
            out.append(rec)
        return out


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
) -> Iterator[tuple[dict[str, Any], AnswerPositions, np.ndarray]]:
    """Per batch: the batch, its answer positions and their (D, K) label probabilities.

    The model runs in eval mode (restored afterwards) and is asked for logits at the answer
    positions only. Batches carry ``labels``; ``sample_index`` and ``labels`` never reach
    the model. Shared by :func:`score` and the callback's own-pass fallback.
    """
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    call = _LogitsAtPositions(model)
    try:
        for batch in batches:
            labels = batch["labels"]
            pos = find_answer_positions(labels, resolved, batch.get("input_ids"))
            if len(pos):
                inputs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v)
                          for k, v in batch.items() if k not in META_KEYS}
                rows = torch.as_tensor(pos.rows, device=dev)
                cols = torch.as_tensor(pos.cols, device=dev)
                probs = decision_probs(call(inputs, rows, cols), resolved)
            else:
                probs = np.zeros((0, len(resolved.labels)))
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
        batches: e.g. from :func:`tracking.data.make_batches`.
        resolved: the spec bound to the model's tokenizer.
        device: where to run; defaults to the model's device.
        progress: optional tqdm-like object; ``update(n_rows)`` is called per batch.

    Example:
        >>> scores = score(model, make_batches(examples, pad_id), spec.resolve(tok))  # doctest: +SKIP
        >>> scores.metrics().scalars["eval_decision_accuracy"]  # doctest: +SKIP
    """
    parts: list[DecisionScores] = []
    for batch, pos, probs in score_batches(model, batches, resolved, device=device):
        n_rows = batch["labels"].shape[0]
        index = np.asarray(batch.get("sample_index", np.arange(n_rows)))
        parts.append(DecisionScores(list(resolved.labels), probs, pos.gt, index[pos.rows], pos.missing))
        if progress is not None:
            progress.update(n_rows)
    return DecisionScores.concat(parts, resolved.labels).sorted()
