"""Eval sets built by LLaMA-Factory itself, so the token ids are those of training.

``tokcal extract`` and ``tokcal backfill`` take ``--llamafactory-config CONFIG.yaml``: the
training YAML. Its ``dataset``/``eval_dataset``, ``dataset_dir`` (``dataset_info.json``),
``template``, ``cutoff_len``, ``val_size``, ``seed``, ``max_samples``, ``default_system``,
``mask_history``, ``train_on_prompt``... go through LLaMA-Factory's own loader, split and
supervised preprocessor, with the tokenizer that ``model_name_or_path`` names, fixed by
LLaMA-Factory's template (its default system prompt included). The eval set is the one the
Trainer evaluated on: the ``val_size`` split of ``dataset`` (same seed), or ``eval_dataset``.

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

import argparse
import contextlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tracking.data.conversation import Example
from tracking.errors import TokcalError

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
        examples: one :class:`~tracking.data.conversation.Example` per eval row, in the Trainer's order
            (``sample_id`` is the row index).
        tokenizer: LLaMA-Factory's tokenizer (the template has fixed its eos/pad tokens);
            score with this one, as the callback did in training.
        template: the template's name; ``name``: ``"validation"`` or ``"validation_<dataset>"``.
        config: the config file.
    """

    examples: list[Example]
    tokenizer: Any
    template: str | None
    name: str
    config: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


def data_args_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with tokcal's keys dropped and the training-only keys neutralised."""
    from callbacks.llamafactory import PREFIX, SWITCH

    out = {k: v for k, v in config.items() if k != SWITCH and not str(k).startswith(PREFIX)}
    for key, value in TRAINING_ONLY.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    out.setdefault("output_dir", "tokcal-llamafactory-eval")
    return out


def _lf_internals() -> tuple[Any, ...]:
    from callbacks.llamafactory import require_llamafactory

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
            multimodal row (images/videos/audios), an unknown ``eval_name``, or
            LLaMA-Factory refusing the config (its message).
    """
    from callbacks.llamafactory import load_config

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
    for i, row in enumerate(rows):
        if max_samples is not None and i >= max_samples:
            break
        media = [k for k in MULTIMODAL if row.get(k)]
        if media:
            raise TokcalError(
                f"{name}: eval row {i} has {', '.join(media)}; --llamafactory-config scores text-only eval sets "
                "(the training callback scores multimodal ones)"
            )
        examples.append(Example(list(row["input_ids"]), list(row["labels"]), i))
    if not examples:
        raise TokcalError(f"{name}: the eval set is empty after LLaMA-Factory's preprocessing")
    tmpl = getattr(data_args, "template", None)
    return EvalSet(examples, tokenizer, tmpl, key, name,
                   info={"cutoff_len": data_args.cutoff_len, "val_size": data_args.val_size,
                         "seed": training_args.seed, "model_name_or_path": model_args.model_name_or_path})


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


# ----------------------------------------------------------------------- CLI helpers


def add_llamafactory_args(p: argparse.ArgumentParser) -> None:
    """``--llamafactory-config`` and friends, for ``extract`` and ``backfill``.

    The subcommand's ``--data`` must not be ``required=True``; call
    :func:`eval_set_from_args` in ``run`` (it checks that exactly one of the two is given).
    """
    g = p.add_argument_group("LLaMA-Factory data (instead of --data)")
    g.add_argument("--llamafactory-config", metavar="CONFIG.yaml",
                   help="the LLaMA-Factory training YAML: build the eval set with its template, dataset_info.json, "
                        "cutoff_len and val_size split, token for token as in training")
    g.add_argument("--llamafactory-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of that YAML, e.g. model_name_or_path=/local/copy (repeatable)")
    g.add_argument("--llamafactory-eval", metavar="NAME",
                   help="which eval set when the config has several (eval_on_each_dataset)")


def eval_set_from_args(args: argparse.Namespace) -> EvalSet | None:
    """The :class:`EvalSet` when ``--llamafactory-config`` is given, else ``None``.

    Raises:
        TokcalError: both or neither of ``--data`` and ``--llamafactory-config``, or
            ``--llamafactory-set``/``--llamafactory-eval`` without the config.
    """
    cfg = getattr(args, "llamafactory_config", None)
    data = getattr(args, "data", None)
    if cfg and data:
        raise TokcalError("expected --data or --llamafactory-config, not both")
    if not cfg:
        if getattr(args, "llamafactory_set", None) or getattr(args, "llamafactory_eval", None):
            raise TokcalError("--llamafactory-set and --llamafactory-eval need --llamafactory-config")
        if not data:
            raise TokcalError("expected --data FILE or --llamafactory-config CONFIG.yaml")
        return None
    if not Path(cfg).is_file():
        raise TokcalError(f"LLaMA-Factory config not found: {cfg}")
    eval_set = load_eval_set(cfg, args.llamafactory_set, eval_name=args.llamafactory_eval,
                             max_samples=getattr(args, "max_samples", None))
    log.info("LLaMA-Factory eval set %s: %d rows (template %s)", eval_set.name, len(eval_set), eval_set.template)
    return eval_set
