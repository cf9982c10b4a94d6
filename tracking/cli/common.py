"""Options and output shared by several subcommands."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from tokcal.core.spec import DecisionSpec, spec_from_args


def add_spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decision spec")
    g.add_argument("--config", metavar="YAML", help="tokcal YAML with a 'spec:' section (see configs/)")
    g.add_argument("--labels", nargs="+", metavar="LABEL", help="decision labels, positive first (default: Accept Reject)")
    g.add_argument("--prefix", help="text right before the label (default: '\\boxed{')")
    g.add_argument("--bins", type=int, default=15, help="reliability bins (default: 15)")


def spec_from(args: argparse.Namespace, base: DecisionSpec | None = None) -> DecisionSpec:
    if getattr(args, "config", None):
        base = DecisionSpec.from_yaml(args.config)
    return spec_from_args(args.labels, args.prefix, base)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model loading")
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder when the checkpoint has none")
    g.add_argument("--chat-template", metavar="FILE", help="Jinja chat template to use instead of the tokenizer's")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--max-tokens", type=int, default=16384, help="padded tokens per batch (default: 16384)")
    g.add_argument("--max-samples", type=int, help="score only the first N records")
    g.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own model code")
    g.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--engine``, ``--vllm-arg``, ``--mode`` and ``--max-new-tokens``."""
    g = p.add_argument_group("scoring engine and mode")
    g.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="hf: transformers (default); vllm: vLLM's batched inference (pip install -e '.[vllm]')")
    g.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a vLLM engine option, e.g. tensor_parallel_size=2, max_model_len=8192, "
                        "gpu_memory_utilization=0.8, enforce_eager=true (repeatable; also a 'vllm:' section in --config)")
    g.add_argument("--mode", choices=["teacher-forced", "generate"], default="teacher-forced",
                   help="teacher-forced: P(label) after the gold answer's text (default); generate: also let the "
                        "model write its own answer (greedy) and read P(label) where it wrote the prefix "
                        "(gen_ metrics beside the others)")
    g.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                   help="with --mode generate: longest answer the model may write (default: 512)")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``engine``, ``engine_options`` (the ``vllm:`` section of --config, then each --vllm-arg),
    ``mode`` and ``max_new_tokens`` for the jobs."""
    from tokcal.engines.vllm import parse_vllm_args
    from tokcal.errors import TokcalError

    options: dict[str, Any] = {}
    if getattr(args, "config", None):
        from tokcal.config import load_yaml

        section = load_yaml(args.config).get("vllm") or {}
        if not isinstance(section, dict):
            raise TokcalError(f"expected the 'vllm:' section of {args.config} as a mapping of vLLM options, "
                              f"got {type(section).__name__}")
        options.update({str(k): v for k, v in section.items()})
    options.update(parse_vllm_args(args.vllm_arg))
    if options and args.engine != "vllm":
        raise TokcalError(f"vLLM options ({', '.join(sorted(options))}) given without --engine vllm")
    return dict(engine=args.engine, engine_options=options or None, mode=args.mode, max_new_tokens=args.max_new_tokens)


def load_kwargs(args: argparse.Namespace) -> dict:
    return dict(tokenizer=args.tokenizer, trust_remote_code=args.trust_remote_code,
                allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)


def read_template(args: argparse.Namespace) -> str | None:
    """The ``--chat-template`` file's text, checked to be a Jinja template."""
    if not args.chat_template:
        return None
    from tokcal.data.conversation import check_chat_template
    from tokcal.io import read_text

    text = read_text(args.chat_template, "chat template")
    check_chat_template(text, args.chat_template)
    return text


def format_table(scalars: Mapping[str, float]) -> str:
    """Two aligned columns, one metric a line."""
    width = max((len(k) for k in scalars), default=0)
    lines = []
    for k, v in scalars.items():
        val = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"
        lines.append(f"{k.ljust(width)}  {val}")
    return "\n".join(lines)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data`` or ``--llamafactory-config`` (and its friends): where the eval set comes from."""
    p.add_argument("--data", metavar="FILE",
                   help="JSON/JSONL: messages, alpaca or sharegpt records, with images or without "
                        "(or --llamafactory-config)")
    im = p.add_argument_group("image data sets (records with image parts or an 'images' column)")
    im.add_argument("--image-dir", metavar="DIR",
                    help="relative image paths resolve here (like LLaMA-Factory's media_dir; "
                         "default: the data file's folder)")
    im.add_argument("--max-pixels", type=int, metavar="N",
                    help="the image processor resizes each image to at most N pixels (default: the checkpoint's)")
    im.add_argument("--min-pixels", type=int, metavar="N",
                    help="...and to at least N pixels (default: the checkpoint's)")
    im.add_argument("--image-pixel-limit", type=int, metavar="N",
                    help="refuse image files larger than N pixels (width x height), checked before the model "
                         "loads (default: Pillow's 89478485)")
    g = p.add_argument_group("LLaMA-Factory data (instead of --data)")
    g.add_argument("--llamafactory-config", metavar="CONFIG.yaml",
                   help="the LLaMA-Factory training YAML: build the eval set with its template, dataset_info.json, "
                        "cutoff_len and val_size split, token for token as in training")
    g.add_argument("--llamafactory-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of that YAML, e.g. model_name_or_path=/local/copy (repeatable)")
    g.add_argument("--llamafactory-eval", metavar="NAME",
                   help="which eval set when the config has several (eval_on_each_dataset)")


def source_from(args: argparse.Namespace) -> Any:
    """The :class:`~tokcal.data.sources.EvalSource` the options name (not yet checked).

    Raises:
        TokcalError: both or neither of ``--data`` and ``--llamafactory-config``, or
            ``--llamafactory-set``/``--llamafactory-eval`` without the config.
    """
    from tokcal.errors import TokcalError

    cfg, data = args.llamafactory_config, args.data
    if cfg and data:
        raise TokcalError("expected --data or --llamafactory-config, not both")
    image_opts = [n for n, v in (("--image-dir", getattr(args, "image_dir", None)),
                                 ("--max-pixels", getattr(args, "max_pixels", None)),
                                 ("--min-pixels", getattr(args, "min_pixels", None)),
                                 ("--image-pixel-limit", getattr(args, "image_pixel_limit", None))) if v is not None]
    if cfg and image_opts:
        raise TokcalError(f"{' and '.join(image_opts)} apply to --data; with --llamafactory-config set "
                          "media_dir/image_max_pixels/image_min_pixels in the YAML (or --llamafactory-set)")
    if cfg:
        from tokcal.callbacks.llamafactory_data import LlamaFactorySource

        return LlamaFactorySource(cfg, args.llamafactory_set, eval_name=args.llamafactory_eval,
                                  max_samples=args.max_samples)
    if args.llamafactory_set or args.llamafactory_eval:
        raise TokcalError("--llamafactory-set and --llamafactory-eval need --llamafactory-config")
    if not data:
        raise TokcalError("expected --data FILE or --llamafactory-config CONFIG.yaml")
    from tokcal.data.sources import open_data_file

    return open_data_file(data, chat_template=read_template(args), max_samples=args.max_samples,
                          image_dir=getattr(args, "image_dir", None), min_pixels=getattr(args, "min_pixels", None),
                          max_pixels=getattr(args, "max_pixels", None),
                          image_pixel_limit=getattr(args, "image_pixel_limit", None))


#: What ``--quiet`` sets for the libraries tokcal drives (read when they start or load).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "WANDB_SILENT": "true",
}


@contextmanager
def quiet_output(enabled: bool = True) -> Iterator[None]:
    """``--quiet``: no progress bars, logs or warnings from the libraries tokcal drives
    (transformers' weight loading, the hub, datasets, MLflow, W&B) for the block; tokcal's
    own warnings and every error still show. Everything is put back afterwards.

    Example:
        >>> with quiet_output():  # doctest: +SKIP
        ...     scores = score_checkpoint("out/checkpoint-500", "eval.jsonl", DecisionSpec(), progress=False)
    """
    if not enabled:
        yield
        return
    from tokcal.io import env_vars

    root, own = logging.getLogger(), logging.getLogger("tokcal")
    levels = (root.level, own.level)
    with env_vars(QUIET_ENV), warnings.catch_warnings(), _quiet_transformers(), _quiet_datasets():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"tokcal(\.|$)")  # tokcal's own stay
        root.setLevel(logging.ERROR)
        own.setLevel(max(logging.WARNING, own.getEffectiveLevel()))
        try:
            yield
        finally:
            root.setLevel(levels[0])
            own.setLevel(levels[1])


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' and the hub's progress bars off and its logs at errors only, then back."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging as tf_logging

    verbosity, bars, hub_off = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(), \
        hub.are_progress_bars_disabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
        if not hub_off:
            hub.enable_progress_bars()


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """The same for ``datasets`` when it is loaded already (else QUIET_ENV reaches it when it loads)."""
    datasets = sys.modules.get("datasets")
    if datasets is None:
        yield
        return
    verbosity, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
