"""Scoring a saved checkpoint on an eval file: shared by ``extract`` and ``backfill``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from tracking.core.scores import DecisionScores
from tracking.core.scoring import score
from tracking.core.spec import DecisionSpec
from tracking.data.batches import make_batches, pad_id_of
from tracking.data.conversation import Example, tokenize_records
from tracking.data.records import read_records, to_messages
from tracking.errors import TokcalError


def score_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    spec: DecisionSpec,
    *,
    max_tokens: int = 16384,
    progress: bool = True,
    desc: str = "scoring",
    shard: tuple[int, int] | None = None,
) -> DecisionScores:
    """Score tokenised examples with a loaded model; results in sample order.

    ``shard=(rank, world)`` scores every world-th batch from ``rank`` on (torchrun).
    """
    if not examples:
        raise TokcalError("the eval set is empty; expected at least one record")
    resolved = spec.resolve(tokenizer)
    batches = make_batches(examples, pad_id_of(tokenizer), max_tokens=max_tokens)
    if shard is not None:
        batches = batches[shard[0]::shard[1]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(len(b["sample_index"]) for b in batches)
        bar = tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False)
    try:
        scores = score(model, batches, resolved, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    scores.sample_ids = [e.sample_id for e in examples]
    return scores


def score_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    spec: DecisionSpec,
    *,
    max_tokens: int = 16384,
    max_samples: int | None = None,
    chat_template: str | None = None,
    progress: bool = True,
    **load_kw: Any,
) -> DecisionScores:
    """Load a checkpoint, tokenise ``data`` with its tokenizer, and score it.

    Example:
        >>> scores = score_checkpoint("out/checkpoint-500", "eval.jsonl", DecisionSpec())  # doctest: +SKIP
        >>> scores.metrics().scalars["eval_decision_prob_mass"]  # doctest: +SKIP
    """
    from tracking.jobs.checkpoints import load_checkpoint

    records = read_records(data)  # a bad data file fails before the model loads
    for i, r in enumerate(records[:max_samples]):
        to_messages(r, f"{Path(data).name}, record {i}")
    model, tokenizer = load_checkpoint(checkpoint, **load_kw)
    examples = tokenize_records(records, tokenizer, chat_template=chat_template, max_samples=max_samples,
                                progress=progress, name=Path(data).name)
    return score_examples(model, tokenizer, examples, spec, max_tokens=max_tokens, progress=progress)
