"""Scoring a saved checkpoint on an eval source: what ``extract`` and ``backfill`` share.

Example:
    >>> scores = score_checkpoint("out/checkpoint-500", "eval.jsonl", DecisionSpec())  # doctest: +SKIP
    >>> scores.metrics().scalars["eval_decision_prob_mass"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokcal.core.positions import FoundDecisions, find_decisions, missing_decisions_message
from tokcal.core.scores import DecisionScores
from tokcal.core.spec import DecisionSpec
from tokcal.data.conversation import Example
from tokcal.data.sources import EvalSource, as_source
from tokcal.engines import Engine, check_mode, get_engine
from tokcal.engines.base import score_with
from tokcal.engines.hf import max_positions, score_examples  # noqa: F401  (their home before the engines)
from tokcal.errors import TokcalError


def score_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: EvalSource | str | os.PathLike[str],
    spec: DecisionSpec,
    *,
    max_tokens: int = 16384,
    max_samples: int | None = None,
    chat_template: str | None = None,
    progress: bool = True,
    engine: str | Engine = "hf",
    engine_options: Mapping[str, Any] | None = None,
    mode: str = "teacher-forced",
    max_new_tokens: int = 512,
    **load_kw: Any,
) -> DecisionScores:
    """Load a checkpoint, build the eval set with its tokenizer, and score it.

    Args:
        checkpoint: the checkpoint folder.
        data: an :class:`~tokcal.data.sources.EvalSource`, or a data file path (then
            ``chat_template`` and ``max_samples`` apply).
        engine: ``"hf"`` (transformers), ``"vllm"`` or an :class:`~tokcal.engines.Engine`.
        engine_options: the engine's own options (vLLM's engine arguments).
        mode: ``"teacher-forced"``, or ``"generate"``: also the model's own greedy answers
            (up to ``max_new_tokens`` tokens), read where it wrote the decision prefix.
        **load_kw: :func:`~tokcal.jobs.checkpoints.load_checkpoint` options.
    """
    from tokcal.jobs.checkpoints import check_load_options, checkpoint_tokenizer

    check_load_options(load_kw.get("device"), load_kw.get("dtype"), max_tokens=max_tokens,
                       tokenizer=load_kw.get("tokenizer"))
    check_mode(mode, max_new_tokens)
    runner = engine if isinstance(engine, Engine) else get_engine(engine, engine_options)
    source = as_source(data, chat_template=chat_template, max_samples=max_samples)
    source.check()  # a bad eval set fails before the model loads
    tok_kw = {k: v for k, v in load_kw.items() if k in ("tokenizer", "trust_remote_code", "allow_pickle")}
    tokenizer = source.tokenizer_for(checkpoint_tokenizer(Path(checkpoint), **tok_kw,
                                                          processor_options=source.processor_options()))
    examples = source.examples(tokenizer, progress=progress)
    find_eval_decisions(examples, spec, tokenizer)  # answers without a decision token fail before the model loads
    runner.check(Path(checkpoint), examples, source=source)
    with runner.open(Path(checkpoint), source=source, **load_kw) as session:
        scores = score_with(session, examples, spec, source=source, mode=mode, max_tokens=max_tokens,
                            max_new_tokens=max_new_tokens, progress=progress)
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
