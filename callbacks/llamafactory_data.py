"""Eval sets built by LLaMA-Factory itself, so the token ids are those of training.

``tokcal extract`` and ``tokcal backfill`` take ``--llamafactory-config CONFIG.yaml``: the
training YAML. Its ``dataset``/``eval_dataset``, ``dataset_dir`` (``dataset_info.json``),
``template``, ``cutoff_len``, ``val_size``, ``seed``, ``max_samples``, ``default_system``,
``mask_history``, ``train_on_prompt``... go through LLaMA-Factory's own loader, split and
supervised preprocessor, with the tokenizer that ``model_name_or_path`` names, fixed by
LLaMA-Factory's template (its default system prompt included). The eval set is the one the
Trainer evaluated on: the ``val_size`` split of ``dataset`` (same seed), or ``eval_dataset``.

Vision-language templates (``qwen2_vl``, ...): the rows keep their ``images`` (resolved
against ``media_dir`` by LLaMA-Factory's converter) and their image tokens expanded by
LLaMA-Factory's multimodal plugin (``mm_plugin``), with its ``image_max_pixels`` and the
checkpoint processor's resize rules; each batch is then made by LLaMA-Factory's own SFT
collator with the model being scored (pixel values, ``image_grid_thw``, and Qwen2-VL's 3-D
``position_ids`` computed as in training), one batch at a time.

The training-only keys (``deepspeed``, ``bf16``/``fp16``, ``report_to``, ...) are set aside,
so a ZeRO-3 GPU config works on a CPU machine without DeepSpeed; the train split is not
tokenised. tokcal's own keys (``track_decision_probs``, ``decision_*``) are dropped.

Example:
    >>> eval_set = load_eval_set("configs/llamafactory_tiny_cpu.yaml")  # doctest: +SKIP
    >>> len(eval_set.examples), eval_set.template  # doctest: +SKIP
    (12, 'qwen')

Tested with llamafactory 0.9.5 (it reaches into ``llamafactory.data.loader``'s helpers
to skip tokenising the train split); another version gets a clear error if they moved.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokcal.core.positions import IGNORE_INDEX
from tokcal.data.batches import LazyBatches, group_by_length
from tokcal.data.conversation import Example
from tokcal.data.sources import EvalSource
from tokcal.errors import TokcalError

log = logging.getLogger(__name__)

#: Keys that only matter to a training run; set to these values (None: removed) before
#: LLaMA-Factory parses the config for its data pipeline.
TRAINING_ONLY: dict[str, Any] = {
    "deepspeed": None, "bf16": False, "fp16": False, "pure_bf16": False, "tf32": None, "fp8": False,
    "report_to": "none", "run_name": None, "push_to_hub": False, "resume_from_checkpoint": None,
    "ddp_timeout": None, "ddp_backend": None, "fsdp": None, "fsdp_config": None, "torch_compile": False,
    "use_cpu": True, "overwrite_output_dir": True, "do_train": False, "do_eval": False, "do_predict": False,
    "predict_with_generate": False, "load_best_model_at_end": False, "use_ray": None, "ray_run_name": None,
    "dataloader_num_workers": 0, "include_num_input_tokens_seen": None, "trackio_space_id": None,
    "project": None,
}
MULTIMODAL = ("images", "videos", "audios")


@dataclass
class EvalSet:
    """An eval set tokenised by LLaMA-Factory.

    Attributes:
        examples: one :class:`~tokcal.data.conversation.Example` per eval row, in the Trainer's order
            (``sample_id`` is the row index).
        tokenizer: LLaMA-Factory's tokenizer (the template has fixed its eos/pad tokens);
            score with this one, as the callback did in training.
        template: the template's name; ``name``: ``"validation"`` or ``"validation_<dataset>"``.
        config: the config file.
        processor: LLaMA-Factory's processor (vision-language models), else ``None``.
        collator_args: what LLaMA-Factory's SFT collator is built with besides the model.

    An example of a multimodal row keeps its media in ``extra`` (``images``, ``videos``,
    ``audios``: paths as LLaMA-Factory resolved them).
    """

    examples: list[Example]
    tokenizer: Any
    template: str | None
    name: str
    config: str
    info: dict[str, Any] = field(default_factory=dict)
    processor: Any = None
    collator_args: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def multimodal(self) -> bool:
        """Whether any row carries images, videos or audios."""
        return any(e.extra for e in self.examples)


def data_args_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with tokcal's keys dropped and the training-only keys neutralised."""
    from tokcal.callbacks.llamafactory import PREFIX, SWITCH

    out = {k: v for k, v in config.items() if k != SWITCH and not str(k).startswith(PREFIX)}
    for key, value in TRAINING_ONLY.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    out.setdefault("output_dir", "tokcal-llamafactory-eval")
    return out


def _lf_internals() -> tuple[Any, ...]:
    from tokcal.callbacks.llamafactory import require_llamafactory

    require_llamafactory()
    try:
        from llamafactory.data import get_template_and_fix_tokenizer, split_dataset
        from llamafactory.data.loader import (
            _get_merged_dataset,
            _get_preprocessed_dataset,
        )
        from llamafactory.hparams.parser import _parse_train_args
        from llamafactory.model import load_tokenizer
    except ImportError as exc:
        import importlib.metadata as md

        raise TokcalError(
            f"this llamafactory ({md.version('llamafactory')}) lacks what tokcal uses to build the eval set "
            f"({exc}); tokcal is tested with llamafactory 0.9.5"
        ) from exc
    return (_parse_train_args, load_tokenizer, get_template_and_fix_tokenizer, _get_merged_dataset,
            split_dataset, _get_preprocessed_dataset)


def load_eval_set(
    config: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    eval_name: str | None = None,
    max_samples: int | None = None,
    quiet: bool = True,
) -> EvalSet:
    """Build the eval set of a LLaMA-Factory training config with LLaMA-Factory.

    Args:
        config: the training YAML (or JSON), or the mapping read from it.
        overrides: ``key=value`` items on top of the file, as on ``llamafactory-cli``'s
            command line (e.g. ``model_name_or_path=/local/copy``).
        eval_name: which eval set when there are several (``eval_on_each_dataset``): the
            dataset name or ``validation_<name>``.
        max_samples: keep only the first N eval rows.
        quiet: hide LLaMA-Factory's prints of the first example.

    Raises:
        TokcalError: no eval set in the config (``val_size`` or ``eval_dataset``), a
            multimodal row without a processor (or with videos/audios), an unknown
            ``eval_name``, or LLaMA-Factory refusing the config or a row (its message,
            e.g. a missing image or a placeholder count that differs from the images).
    """
    from tokcal.callbacks.llamafactory import load_config

    name = str(config) if not isinstance(config, Mapping) else "<config>"
    data = load_config(config, overrides) if not isinstance(config, Mapping) else dict(config)
    args = data_args_dict(data)
    (parse, load_tokenizer, get_template, merged, split, preprocess) = _lf_internals()
    try:
        model_args, data_args, training_args, finetuning_args, _ = parse(args)
    except (ValueError, TypeError) as exc:
        raise TokcalError(f"LLaMA-Factory refused {name}: {str(exc).splitlines()[0]}") from exc
    if data_args.eval_dataset is None and data_args.val_size < 1e-6:
        raise TokcalError(f"{name} has no eval set: expected val_size or eval_dataset, as the training "
                          "evaluation needs")
    # What get_train_args sets up for the data pipeline (the rest is about training).
    model_args.model_max_length = data_args.cutoff_len
    model_args.block_diag_attn = data_args.neat_packing
    if data_args.packing is None:
        data_args.packing = finetuning_args.stage == "pt"
    stage = finetuning_args.stage
    if stage != "sft":
        raise TokcalError(f"{name} is a '{stage}' config; tokcal scores decisions in SFT evaluation (stage: sft)")

    sink = io.StringIO()
    quiet_ctx = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    try:
        with quiet_ctx:
            tok_module = load_tokenizer(model_args)
            tokenizer = tok_module["tokenizer"]
            template = get_template(tokenizer, data_args)
            dataset = merged(data_args.dataset, model_args, data_args, training_args, stage) \
                if data_args.val_size > 1e-6 else None
            eval_dataset = merged(data_args.eval_dataset, model_args, data_args, training_args, stage,
                                  return_dict=data_args.eval_on_each_dataset)
            _, eval_dict = split(dataset, eval_dataset, data_args, seed=training_args.seed)
            if not eval_dict:
                raise TokcalError(f"{name}: LLaMA-Factory built no eval set")
            key = _pick(eval_dict, eval_name, name)
            rows = preprocess(eval_dict[key], data_args, training_args, stage, template, tokenizer,
                              tok_module.get("processor"), is_eval=True)
    except TokcalError:
        raise
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise TokcalError(f"LLaMA-Factory could not build the eval set of {name}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    examples = []
    processor = tok_module.get("processor")
    for i, row in enumerate(rows):
        if max_samples is not None and i >= max_samples:
            break
        media = {k: list(row[k]) for k in MULTIMODAL if row.get(k)}
        if set(media) - {"images"}:
            raise TokcalError(f"{name}: eval row {i} has {', '.join(sorted(set(media) - {'images'}))}; "
                              "--llamafactory-config scores text and image eval sets")
        if media and processor is None:
            raise TokcalError(f"{name}: eval row {i} has images but LLaMA-Factory loaded no processor for "
                              f"{model_args.model_name_or_path}; expected a vision-language model with its "
                              "processor files (and torchvision installed, which its video processor needs)")
        examples.append(Example(list(row["input_ids"]), list(row["labels"]), i, extra=media))
    if not examples:
        raise TokcalError(f"{name}: the eval set is empty after LLaMA-Factory's preprocessing")
    if any(e.extra for e in examples):
        _check_images(examples, name)
    tmpl = getattr(data_args, "template", None)
    info = {"cutoff_len": data_args.cutoff_len, "val_size": data_args.val_size, "seed": training_args.seed,
            "model_name_or_path": model_args.model_name_or_path}
    if processor is not None:
        info.update(image_max_pixels=getattr(processor, "image_max_pixels", None),
                    image_min_pixels=getattr(processor, "image_min_pixels", None))
    collator_args = dict(template=template, tokenizer=tokenizer, processor=processor, label_pad_token_id=IGNORE_INDEX
                         if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
                         pad_to_multiple_of=8,  # as the training run's collator (do_train)
                         block_diag_attn=model_args.block_diag_attn, neat_packing=data_args.neat_packing)
    return EvalSet(examples, tokenizer, tmpl, key, name, info=info, processor=processor, collator_args=collator_args)


def _check_images(examples: Sequence[Example], name: str) -> None:
    """Every image of every row opens (header and structure only, no decoding)."""
    from tokcal.data.images import image_size

    seen: set[str] = set()
    for e in examples:
        for path in e.extra.get("images", []):
            if isinstance(path, str) and path not in seen:
                seen.add(path)
                image_size(Path(path), f"{name}: eval row {e.sample_id}")


def collate_batches(eval_set: EvalSet, examples: Sequence[Example], model: Any, *, max_tokens: int) -> LazyBatches:
    """Length-sorted batches within ``max_tokens`` (image tokens are in the ids already),
    each made when read by LLaMA-Factory's SFT collator with ``model``, as in training."""
    import numpy as np
    import torch
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask

    if model is None:
        raise TokcalError("LLaMA-Factory's multimodal collator needs the model being scored; pass model=")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    collator = SFTDataCollatorWith4DAttentionMask(
        model=model, attn_implementation=getattr(model.config, "_attn_implementation", None),
        compute_dtype=dtype, **eval_set.collator_args)
    groups = group_by_length([len(e) for e in examples], max_tokens=max_tokens)

    def build(group: list[int]) -> dict[str, Any]:
        feats = []
        for i in group:
            e = examples[i]
            feats.append({"input_ids": list(e.input_ids), "attention_mask": [1] * len(e), "labels": list(e.labels),
                          "images": list(e.extra.get("images", [])), "videos": [], "audios": []})
        try:
            batch = dict(collator(feats))
        except (ValueError, OSError) as exc:
            raise TokcalError(f"LLaMA-Factory's collator refused eval rows {group}: {str(exc).splitlines()[0]}") from exc
        batch["sample_index"] = np.asarray(group)
        return batch

    return LazyBatches(groups, build)


def _pick(eval_dict: Mapping[str, Any], eval_name: str | None, name: str) -> str:
    keys = list(eval_dict)
    if eval_name is None:
        if len(keys) > 1:
            raise TokcalError(f"{name} has several eval sets ({', '.join(keys)}); pick one with --llamafactory-eval")
        return keys[0]
    for cand in (eval_name, f"validation_{eval_name}"):
        if cand in eval_dict:
            return cand
    raise TokcalError(f"no eval set {eval_name!r} in {name}; expected one of {keys}")


class LlamaFactorySource(EvalSource):
    """The eval set of a LLaMA-Factory training config, built by LLaMA-Factory itself.

    It is built once in :meth:`check` (with LLaMA-Factory's tokenizer, fixed by its
    template), and every checkpoint is scored with that tokenizer and those token ids, as
    the training callback did.

    Args:
        config: the training YAML (or JSON).
        overrides: ``key=value`` items on top of it (``model_name_or_path=/local/copy``).
        eval_name: which eval set when there are several (``eval_on_each_dataset``).
        max_samples: keep only the first N eval rows.

    Example:
        >>> source = LlamaFactorySource("train.yaml")  # doctest: +SKIP
        >>> scores = score_checkpoint("out/checkpoint-500", source, spec)  # doctest: +SKIP
    """

    def __init__(self, config: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                 eval_name: str | None = None, max_samples: int | None = None) -> None:
        if not Path(config).is_file():
            raise TokcalError(f"LLaMA-Factory config not found: {config}")
        self.config, self.overrides = str(config), list(overrides)
        self.eval_name, self.max_samples = eval_name, max_samples
        self.name = Path(config).name
        self._eval_set: EvalSet | None = None

    @property
    def eval_set(self) -> EvalSet:
        """The built eval set (built on first use)."""
        if self._eval_set is None:
            self._eval_set = load_eval_set(self.config, self.overrides, eval_name=self.eval_name,
                                           max_samples=self.max_samples)
            log.info("LLaMA-Factory eval set %s: %d rows (template %s)", self._eval_set.name,
                     len(self._eval_set), self._eval_set.template)
        return self._eval_set

    def check(self) -> None:
        self.eval_set  # noqa: B018 - building it is the check

    def tokenizer_for(self, tokenizer: Any) -> Any:
        return self.eval_set.tokenizer

    def cache_key(self, tokenizer: Any) -> str:
        return f"llamafactory:{self.config}"

    def examples(self, tokenizer: Any, *, progress: bool = False) -> list[Example]:
        return self.eval_set.examples

    def batches(self, examples: Sequence[Example], tokenizer: Any, *, max_tokens: int,
                model: Any = None) -> Sequence[dict[str, Any]]:
        """Text rows: right-padded token batches. Image rows: LLaMA-Factory's own SFT
        collator with the model being scored (:func:`collate_batches`), as in training."""
        if not self.eval_set.multimodal:
            return super().batches(examples, tokenizer, max_tokens=max_tokens)
        return collate_batches(self.eval_set, examples, model, max_tokens=max_tokens)

    def metadata(self) -> dict[str, Any]:
        return {"source": self.config, "llamafactory_eval": self.eval_set.name, **self.eval_set.info}
