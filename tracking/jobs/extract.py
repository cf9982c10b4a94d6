"""Scoring a saved checkpoint on an eval source: what ``extract`` and ``backfill`` share.

Example:
    >>> scores = score_checkpoint("out/checkpoint-500", "eval.jsonl", DecisionSpec())  # doctest: +SKIP
    >>> scores.metrics().scalars["eval_decision_prob_mass"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from tokcal.core.positions import FoundDecisions, find_decisions, missing_decisions_message
from tokcal.core.scores import DecisionScores
from tokcal.core.scoring import score
from tokcal.core.spec import DecisionSpec
from tokcal.data.batches import count_rows, make_batches, pad_id_of
from tokcal.data.conversation import Example
from tokcal.data.sources import EvalSource, as_source
from tokcal.errors import TokcalError


def score_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    spec: DecisionSpec,
    *,
    source: EvalSource | None = None,
    max_tokens: int = 16384,
    progress: bool = True,
    desc: str = "scoring",
    shard: tuple[int, int] | None = None,
) -> DecisionScores:
    """Score tokenised examples with a loaded model; results in sample order. Decisions
    whose probabilities are not finite are left out and counted (``nonfinite``).

    Args:
        tokenizer: the tokenizer, or the processor for image sources (its ``.tokenizer``
            resolves the decision tokens).
        source: makes the batches (default: right-padded, length-sorted token batches).
        shard: ``(rank, world)`` scores every world-th batch from ``rank`` on (torchrun).
    """
    if not examples:
        raise TokcalError("the eval set is empty; expected at least one record")
    resolved = spec.resolve(getattr(tokenizer, "tokenizer", tokenizer))
    if source is not None:
        batches = source.batches(examples, tokenizer, max_tokens=max_tokens, model=model)
    else:
        batches = make_batches(examples, pad_id_of(tokenizer), max_tokens=max_tokens)
    if shard is None or shard[0] == 0:
        _warn_too_long(model, examples)
    if shard is not None:
        batches = batches[shard[0]::shard[1]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = count_rows(batches)
        bar = tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False)
    try:
        scores = score(model, batches, resolved, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    scores.sample_ids = [e.sample_id for e in examples]
    return scores.without_nonfinite()


def max_positions(model: Any) -> int | None:
    """The model's ``max_position_embeddings`` (a vision-language model's text part's)."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        n = getattr(cfg, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def _warn_too_long(model: Any, examples: Sequence[Example]) -> None:
    """One warning when records are longer than the model's positions: they are scored as
    they are (cutting them would cut the answer), but past what the model was trained on."""
    limit = max_positions(model)
    if limit is None:
        return
    long = [e for e in examples if len(e) > limit]
    if long:
        worst = max(long, key=len)
        warnings.warn(f"{len(long)} of {len(examples)} records are longer than the model's {limit} positions "
                      f"(the longest, {worst.sample_id!r}, has {len(worst)} tokens); they are scored as they are, "
                      "beyond the length the model handles, so their probabilities may be off; shorten them or "
                      "leave them out of the data file", stacklevel=3)


def score_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: EvalSource | str | os.PathLike[str],
    spec: DecisionSpec,
    *,
    max_tokens: int = 16384,
    max_samples: int | None = None,
    chat_template: str | None = None,
    progress: bool = True,
    **load_kw: Any,
) -> DecisionScores:
    """Load a checkpoint, build the eval set with its tokenizer, and score it.

    Args:
        checkpoint: the checkpoint folder.
        data: an :class:`~tokcal.data.sources.EvalSource`, or a data file path (then
            ``chat_template`` and ``max_samples`` apply).
        **load_kw: :func:`~tokcal.jobs.checkpoints.load_checkpoint` options.
    """
    from tokcal.jobs.checkpoints import (
        check_load_options,
        checkpoint_tokenizer,
        load_checkpoint,
    )

    check_load_options(load_kw.get("device"), load_kw.get("dtype"), max_tokens=max_tokens,
                       tokenizer=load_kw.get("tokenizer"))
    source = as_source(data, chat_template=chat_template, max_samples=max_samples)
    source.check()  # a bad eval set fails before the model loads
    tok_kw = {k: v for k, v in load_kw.items() if k in ("tokenizer", "trust_remote_code", "allow_pickle")}
    tokenizer = source.tokenizer_for(checkpoint_tokenizer(Path(checkpoint), **tok_kw,
                                                          processor_options=source.processor_options()))
    examples = source.examples(tokenizer, progress=progress)
    find_eval_decisions(examples, spec, tokenizer)  # answers without a decision token fail before the model loads
    model, tokenizer = load_checkpoint(Path(checkpoint), **load_kw, processor_options=source.processor_options())
    tokenizer = source.tokenizer_for(tokenizer)
    scores = score_examples(model, tokenizer, examples, spec, source=source, max_tokens=max_tokens,
                            progress=progress)
    if scores.nonfinite:
        warnings.warn(scores.nonfinite_message(str(checkpoint)), stacklevel=2)
    return scores


#: How to fix answers without a decision token, from the command line.
FIX_LABELS = "Pass the labels and the prefix that the answers use (--labels, --prefix)."


def find_eval_decisions(examples: Sequence[Example], spec: DecisionSpec, tokenizer: Any, *,
                        fix: str = FIX_LABELS) -> FoundDecisions:
    """The decisions of tokenised examples, found without a model (what scoring will score).

    Raises:
        TokcalError: the answers hold no decision token at all (labels or prefix that the
            data does not use), with an answer quoted and the tokens expected.

    Example:
        >>> found = find_eval_decisions(examples, DecisionSpec(), tokenizer)  # doctest: +SKIP
        >>> len(found)  # doctest: +SKIP
        120
    """
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    with warnings.catch_warnings(record=True) as caught:  # shown below, unless no label is in the data
        warnings.simplefilter("always")
        resolved = spec.resolve(text_tokenizer)
    found = find_decisions([(e.input_ids, e.labels) for e in examples], resolved)
    if found.missing and not len(found):
        raise TokcalError(missing_decisions_message(resolved, text_tokenizer, found.first_miss, fix))
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return found
