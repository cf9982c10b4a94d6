"""What every scoring engine gives: a checkpoint opened once, its tokenizer, and the decisions
of tokenised examples scored teacher-forced (and, in generate mode, from the model's own answers).

The examples are built once, by the eval source, with the checkpoint's tokenizer; an engine
scores the same tokens. The jobs (``tokcal extract``, ``tokcal backfill``) only call
:meth:`Engine.check`, :meth:`Engine.open` and the session's :meth:`Session.score` and
:meth:`Session.generate`, so sources, metrics, trackers and the per-decision records are the
same whichever engine scores.

Example:
    >>> engine = get_engine("hf")  # doctest: +SKIP
    >>> with engine.open("out/checkpoint-500", source=source) as session:  # doctest: +SKIP
    ...     scores = session.score(examples, spec, source=source)
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tokcal.core.generated import GeneratedDecisions, written_decision_at
from tokcal.core.positions import find_decisions
from tokcal.core.scores import DecisionScores
from tokcal.core.spec import DecisionSpec, ResolvedSpec
from tokcal.data.conversation import Example
from tokcal.data.sources import EvalSource
from tokcal.errors import TokcalError

#: The scoring modes: ``teacher-forced`` reads P(label) after the gold text; ``generate`` also
#: lets the model write its own answer and reads P(label) where it wrote the decision prefix.
MODES = ("teacher-forced", "generate")


@dataclass(frozen=True)
class DecisionSite:
    """Where one decision sits in its example.

    Attributes:
        example: index of the example.
        col: position of the decision token (the prompt of a teacher-forced request is
            ``input_ids[:col]``).
        answer_start: first position of the supervised answer that holds it (the prompt of a
            generated answer is ``input_ids[:answer_start]``).
        gt: the true label's index.
    """

    example: int
    col: int
    answer_start: int
    gt: int


def decision_sites(examples: Sequence[Example], resolved: ResolvedSpec) -> tuple[list[DecisionSite], int]:
    """Every decision of the examples, in the order the scores come in (example, then position),
    found exactly as the Hugging Face engine finds them in a batch
    (:func:`~tokcal.core.positions.find_decisions`), and how many supervised answers hold none.

    Example:
        >>> sites, missing = decision_sites(examples, spec.resolve(tokenizer))  # doctest: +SKIP
        >>> examples[sites[0].example].input_ids[:sites[0].col]  # the teacher-forced prompt  # doctest: +SKIP
    """
    found = find_decisions([(e.input_ids, e.labels) for e in examples], resolved)
    sites = [DecisionSite(int(i), int(c), int(a), int(g))
             for i, c, a, g in zip(found.sample_index, found.cols, found.answer_starts, found.gt)]
    return sites, found.missing


def label_probs(logprobs: Mapping[int, float], resolved: ResolvedSpec) -> np.ndarray:
    """(K,) label probabilities from log-probabilities of token ids (each label's variants summed).

    Example:
        >>> class R: token_ids = [(5, 6), (7,)]
        >>> label_probs({5: np.log(0.2), 6: np.log(0.1), 7: np.log(0.3)}, R()).round(3).tolist()
        [0.3, 0.3]
    """
    from scipy.special import logsumexp

    return np.array([np.exp(logsumexp([logprobs.get(int(t), -np.inf) for t in ids])) for ids in resolved.token_ids],
                    dtype=np.float64)


def read_generated(site: DecisionSite, example: Example, generated: Sequence[int],
                   step_logprobs: Sequence[Mapping[int, float]], resolved: ResolvedSpec) -> tuple[np.ndarray, bool, bool]:
    """``(probs, written, label_written)`` of one generated answer: P(label) at the first
    position after the decision prefix that the model wrote (``step_logprobs[j]``: the label
    tokens' log-probabilities at generated position ``j``)."""
    k = len(resolved.token_ids)
    j = written_decision_at(generated, prompt_tail=example.input_ids[:site.answer_start],
                            anchor=resolved.anchor_ids())
    if j is None or j >= len(step_logprobs):
        return np.full(k, np.nan), False, False
    label_ids = {int(t) for ids in resolved.token_ids for t in ids}
    return label_probs(step_logprobs[j], resolved), True, int(generated[j]) in label_ids


def generated_from(rows: Sequence[tuple[np.ndarray, bool, bool, str | None, int]], k: int) -> GeneratedDecisions:
    """:class:`GeneratedDecisions` from one ``(probs, written, label_written, text, length)`` per decision."""
    if not rows:
        return GeneratedDecisions.concat([], k)
    texts = [r[3] for r in rows]
    return GeneratedDecisions(np.stack([r[0] for r in rows]).reshape(-1, k), np.array([r[1] for r in rows], bool),
                              np.array([r[2] for r in rows], bool),
                              None if any(t is None for t in texts) else [str(t) for t in texts],
                              np.array([r[4] for r in rows], np.int64))


def collapse_runs(ids: Sequence[int], token: int) -> tuple[list[int], int]:
    """``ids`` with each run of ``token`` cut to one (one per image), and the number of runs.

    Example:
        >>> collapse_runs([1, 9, 9, 9, 2, 9, 3], 9)
        ([1, 9, 2, 9, 3], 2)
    """
    out: list[int] = []
    n = 0
    for t in ids:
        if t == token and out and out[-1] == token:
            continue
        n += t == token
        out.append(int(t))
    return out, n


def image_token_of(tokenizer: Any) -> int | None:
    """The image placeholder token of a vision-language processor; ``None`` for a tokenizer."""
    if not hasattr(tokenizer, "image_processor"):
        return None
    from tokcal.data.images import image_token_id

    return image_token_id(tokenizer)


class Session(ABC):
    """One checkpoint, loaded by an engine; closed (and its memory freed) by the engine's
    context manager."""

    #: the checkpoint's tokenizer, or its processor for image sources
    tokenizer: Any

    @abstractmethod
    def score(self, examples: Sequence[Example], spec: DecisionSpec, *, source: EvalSource, max_tokens: int,
              progress: bool, desc: str, shard: tuple[int, int] | None = None) -> DecisionScores:
        """Teacher-forced scores of every decision, in example order (``shard``: this rank's share)."""

    @abstractmethod
    def generate(self, examples: Sequence[Example], spec: DecisionSpec, sites: Sequence[DecisionSite], *,
                 source: EvalSource, max_new_tokens: int, progress: bool, desc: str) -> GeneratedDecisions:
        """The model's own answer to each decision's prompt (greedy), one row per site."""


class Engine(ABC):
    """How checkpoints are run: Hugging Face (``hf``) or vLLM (``vllm``)."""

    name: str = ""

    def tags(self) -> dict[str, str]:
        """Tags for the evaluations it scores, beside backfill's marker (none for the default engine)."""
        return {}

    @abstractmethod
    def check(self, checkpoint: Path, examples: Sequence[Example] | None, *, source: EvalSource) -> None:
        """What can fail before the model loads (options, architecture, prompt lengths)."""

    @abstractmethod
    def open(self, checkpoint: str | os.PathLike[str], *, source: EvalSource,
             **load_kw: Any) -> AbstractContextManager[Session]:
        """Load the checkpoint (with its processor when ``source`` has images; ``load_kw``: the
        :func:`~tokcal.jobs.checkpoints.load_checkpoint` options); the context's exit frees it."""


def check_mode(mode: str, max_new_tokens: int) -> None:
    """``mode`` one of :data:`MODES`, ``max_new_tokens`` a positive integer."""
    if mode not in MODES:
        raise TokcalError(f"expected mode to be one of {list(MODES)}, got {mode!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise TokcalError(f"expected max_new_tokens >= 1, got {max_new_tokens!r}")


def check_aligned(scores: DecisionScores, sites: Sequence[DecisionSite]) -> None:
    """The teacher-forced rows and the answers to generate are the same decisions, in the same order."""
    si = np.array([s.example for s in sites], dtype=np.int64)
    gt = np.array([s.gt for s in sites], dtype=np.int64)
    if len(si) != len(scores) or not (np.array_equal(si, scores.sample_index) and np.array_equal(gt, scores.gt)):
        raise TokcalError(f"internal error: {len(scores)} teacher-forced decisions but {len(si)} answers to "
                          "generate, or in another order; please report it")


def score_with(session: Session, examples: Sequence[Example], spec: DecisionSpec, *, source: EvalSource,
               mode: str = "teacher-forced", max_tokens: int = 16384, max_new_tokens: int = 512,
               progress: bool = True, desc: str = "scoring", shard: tuple[int, int] | None = None) -> DecisionScores:
    """Score the examples in an open session: teacher-forced, and in generate mode the model's own
    answers beside (``scores.generated``); decisions whose probabilities are not finite are left
    out and counted (``nonfinite``).

    Example:
        >>> with get_engine("hf").open(checkpoint, source=source) as session:  # doctest: +SKIP
        ...     scores = score_with(session, examples, spec, source=source, mode="generate")
    """
    scores = session.score(examples, spec, source=source, max_tokens=max_tokens, progress=progress, desc=desc,
                           shard=shard)
    if mode == "generate":
        if shard is not None and shard[1] > 1:
            raise TokcalError("generate mode runs in one process; start it without torchrun")
        text_tok = getattr(session.tokenizer, "tokenizer", session.tokenizer)
        sites, _ = decision_sites(examples, spec.resolve(text_tok))
        check_aligned(scores, sites)
        scores.generated = session.generate(examples, spec, sites, source=source, max_new_tokens=max_new_tokens,
                                            progress=progress, desc=f"{desc}: generating")
    return scores.without_nonfinite()
