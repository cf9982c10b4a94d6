"""The Hugging Face engine (``--engine hf``, the default): the checkpoint loaded with
transformers, logits computed at the decision positions only (:mod:`tokcal.core.scoring`);
generate mode with ``model.generate`` (greedy), one prompt at a time.

Example:
    >>> with HFEngine().open("out/checkpoint-500", source=source) as session:  # doctest: +SKIP
    ...     scores = session.score(examples, DecisionSpec(), source=source, max_tokens=16384,
    ...                            progress=False, desc="scoring")
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tokcal.core.generated import GeneratedDecisions
from tokcal.core.scores import DecisionScores
from tokcal.core.scoring import score
from tokcal.core.spec import DecisionSpec
from tokcal.data.batches import count_rows, make_batches, pad_id_of
from tokcal.data.conversation import Example
from tokcal.data.sources import EvalSource
from tokcal.engines.base import (
    DecisionSite,
    Engine,
    Session,
    collapse_runs,
    generated_from,
    image_token_of,
    read_generated,
)
from tokcal.errors import TokcalError

#: Batch keys that are laid out along the sequence (cut with the prompt); the model computes
#: its own positions for a shorter prompt, so ``position_ids`` is dropped.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


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
    drop_nonfinite: bool = True,
) -> DecisionScores:
    """Score tokenised examples with a loaded model; results in sample order. Decisions
    whose probabilities are not finite are left out and counted (``nonfinite``) unless
    ``drop_nonfinite`` is false.

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
        warn_too_long(max_positions(model), examples)
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
    return scores.without_nonfinite() if drop_nonfinite else scores


def max_positions(model: Any) -> int | None:
    """The model's ``max_position_embeddings`` (a vision-language model's text part's)."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        n = getattr(cfg, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def warn_too_long(limit: int | None, examples: Sequence[Example]) -> None:
    """One warning when records are longer than the model's positions: they are scored as
    they are (cutting them would cut the answer), but past what the model was trained on."""
    if limit is None:
        return
    long = [e for e in examples if len(e) > limit]
    if long:
        worst = max(long, key=len)
        warnings.warn(f"{len(long)} of {len(examples)} records are longer than the model's {limit} positions "
                      f"(the longest, {worst.sample_id!r}, has {len(worst)} tokens); they are scored as they are, "
                      "beyond the length the model handles, so their probabilities may be off; shorten them or "
                      "leave them out of the data file", stacklevel=3)


class HFSession(Session):
    """A checkpoint loaded with transformers."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def score(self, examples: Sequence[Example], spec: DecisionSpec, *, source: EvalSource, max_tokens: int,
              progress: bool, desc: str, shard: tuple[int, int] | None = None) -> DecisionScores:
        return score_examples(self.model, self.tokenizer, examples, spec, source=source, max_tokens=max_tokens,
                              progress=progress, desc=desc, shard=shard, drop_nonfinite=False)

    def generate(self, examples: Sequence[Example], spec: DecisionSpec, sites: Sequence[DecisionSite], *,
                 source: EvalSource, max_new_tokens: int, progress: bool, desc: str) -> GeneratedDecisions:
        import torch

        text_tok = getattr(self.tokenizer, "tokenizer", self.tokenizer)
        resolved = spec.resolve(text_tok)
        label_ids = sorted({int(t) for ids in resolved.token_ids for t in ids})
        model = self.model
        dev = next(model.parameters()).device
        greedy = plain_greedy(model, text_tok, max_new_tokens)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(sites), desc=desc, unit="answer", file=sys.stderr, leave=False)
        rows = []
        was_training = model.training
        model.eval()
        try:
            for site in sites:
                example = examples[site.example]
                inputs = self._prompt(example, site, source)
                inputs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
                n_prompt = int(inputs["input_ids"].shape[1])
                with torch.inference_mode(), _generation_config(model, greedy):
                    out = model.generate(**inputs, generation_config=greedy)
                generated = out.sequences[0, n_prompt:].tolist()
                steps = [_LogprobsAt(logits, label_ids) for logits in out.logits]
                probs, written, label_written = read_generated(site, example, generated, steps, resolved)
                rows.append((probs, written, label_written, text_tok.decode(generated, skip_special_tokens=True),
                             len(generated)))
                if bar is not None:
                    bar.update(1)
        finally:
            model.train(was_training)
            if bar is not None:
                bar.close()
        return generated_from(rows, len(resolved.token_ids))

    def _prompt(self, example: Example, site: DecisionSite, source: EvalSource) -> dict[str, Any]:
        """The model inputs of ``example`` cut before its answer, as a batch of one: the
        sequence cut, and the images whose tokens come after the cut left out."""
        batch = source.batches([example], self.tokenizer, max_tokens=max(len(example), 1), model=self.model)[0]
        ids = example.input_ids
        t = len(ids)
        out = {}
        for k, v in batch.items():
            if k in ("labels", "sample_index", "position_ids"):
                continue
            if k in _SEQUENCE_KEYS and hasattr(v, "shape") and v.shape[-1] == t:
                v = v[..., :site.answer_start]
            out[k] = v
        token = image_token_of(self.tokenizer)
        if token is not None and "pixel_values" in out:
            kept, total = collapse_runs(ids[:site.answer_start], token)[1], collapse_runs(ids, token)[1]
            if kept < total:
                _keep_images(out, kept, example)
        return out


class _LogprobsAt(Mapping[int, float]):
    """The label tokens' log-probabilities at one generated position, computed when read."""

    def __init__(self, logits: Any, ids: Sequence[int]) -> None:
        self._logits, self._ids = logits, ids
        self._cache: dict[int, float] | None = None

    def _values(self) -> dict[int, float]:
        if self._cache is None:
            import torch

            logp = torch.log_softmax(self._logits[0].float(), dim=-1)
            self._cache = {i: float(logp[i]) for i in self._ids}
        return self._cache

    def __getitem__(self, key: int) -> float:
        return self._values()[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._ids)


def _keep_images(inputs: dict[str, Any], kept: int, example: Example) -> None:
    """Keep the first ``kept`` images of a processor's batch of one: Qwen2-VL-style processors
    lay ``pixel_values`` out image after image, ``prod(image_grid_thw[i])`` rows each."""
    grid = inputs.get("image_grid_thw")
    if grid is None:
        raise TokcalError(f"record {example.sample_id!r} has an image after an answer, and this processor's outputs do "
                          "not say which pixels are whose; generate mode needs its images before the first answer")
    rows = int(grid[:kept].prod(dim=-1).sum())
    if kept:
        inputs["pixel_values"] = inputs["pixel_values"][:rows]
        inputs["image_grid_thw"] = grid[:kept]
    else:
        del inputs["pixel_values"], inputs["image_grid_thw"]


def plain_greedy(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """Plain greedy decoding (the argmax at each step, as vLLM's ``temperature=0``) with the raw
    logits of each step and the checkpoint's end tokens, and nothing else of the checkpoint's
    generation config: its repetition penalty, banned n-grams or sampling settings would change
    which answer is "the model's own" and make the two engines disagree."""
    from transformers import GenerationConfig

    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            eos[0] if isinstance(eos, list) else eos)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, output_logits=True,
                            return_dict_in_generate=True, eos_token_id=eos, pad_token_id=pad,
                            bos_token_id=getattr(cfg, "bos_token_id", None))


@contextmanager
def _generation_config(model: Any, config: Any) -> Iterator[None]:
    """``model.generation_config`` is ``config`` inside: ``generate`` fills a setting that the
    given config leaves unset from the model's own, so the model's own must be the plain one too."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


class HFEngine(Engine):
    """Scores with transformers (the default engine)."""

    name = "hf"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        if options:
            raise TokcalError(f"engine options ({', '.join(sorted(options))}) are vLLM's; pass --engine vllm with them")

    def check(self, checkpoint: Path, examples: Sequence[Example] | None, *, source: EvalSource) -> None:
        """Nothing beyond what loading checks."""

    @contextmanager
    def open(self, checkpoint: str | os.PathLike[str], *, source: EvalSource, **load_kw: Any) -> Iterator[HFSession]:
        from tokcal.jobs import checkpoints

        model = None
        try:
            model, tokenizer = checkpoints.load_checkpoint(Path(checkpoint), **load_kw,
                                                           processor_options=source.processor_options())
            yield HFSession(model, source.tokenizer_for(tokenizer))
        finally:
            del model
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover - torch is a dependency
                pass
