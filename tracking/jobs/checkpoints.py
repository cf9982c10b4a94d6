"""Finding and loading checkpoints, safely (safetensors unless pickles are allowed).

Vision-language checkpoints (a ``vision_config`` in ``config.json``) load with
``AutoModelForImageTextToText`` and, for image eval sets, their processor
(:func:`load_processor`), which works without torchvision for images.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from tokcal.errors import TokcalError, first_line

log = logging.getLogger(__name__)

_SAFE = ("model.safetensors", "model.safetensors.index.json")
_PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_ADAPTER = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds."""

    path: Path
    kind: str  # "full" | "adapter"
    pickle: bool


def inspect_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> CheckpointInfo:
    """Check a folder before loading it; every problem is a one-line :class:`TokcalError`."""
    p = Path(path)
    if not p.exists():
        raise TokcalError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise TokcalError(f"expected a checkpoint folder, got a file: {p}")
    if (p / "adapter_config.json").is_file():
        pickle = not (p / _ADAPTER[0]).is_file()
        if pickle and not (p / _ADAPTER[1]).is_file():
            raise TokcalError(f"{p} has adapter_config.json but no adapter weights")
        if pickle and not allow_pickle:
            raise TokcalError(f"{p} holds pickle weights (adapter_model.bin); pass --allow-pickle if you trust it")
        return CheckpointInfo(p, "adapter", pickle)
    if not (p / "config.json").is_file():
        raise TokcalError(f"{p} is not a model checkpoint: no config.json")
    if any((p / f).is_file() for f in _SAFE):
        return CheckpointInfo(p, "full", False)
    if any((p / f).is_file() for f in _PICKLE):
        if not allow_pickle:
            raise TokcalError(f"{p} holds pickle weights (pytorch_model.bin); pass --allow-pickle if you trust it")
        return CheckpointInfo(p, "full", True)
    if any(p.glob("global_step*/*zero*")) or (p / "zero_to_fp32.py").is_file():
        raise TokcalError(
            f"{p} holds DeepSpeed ZeRO shards but no consolidated weights; run "
            f"'python {p}/zero_to_fp32.py {p} {p} --safe_serialization' first"
        )
    raise TokcalError(f"{p} has no model weights (expected model.safetensors or an index)")


_DTYPES = ("float32", "bfloat16", "float16")


def check_load_options(device: str | None = None, dtype: str | None = None, *, max_tokens: int = 16384,
                       tokenizer: str | os.PathLike[str] | None = None) -> None:
    """Check the loading and batching options before anything loads.

    Raises:
        TokcalError: an unknown device or dtype, a CUDA device on a machine without one
            (or an index past the last GPU), ``max_tokens`` < 1, or a ``tokenizer`` path
            that is not a folder (a hub name such as ``org/name`` is left to loading).

    Example:
        >>> check_load_options("cpu", "float32")
        >>> check_load_options("gpu")
        Traceback (most recent call last):
        ...
        tokcal.errors.TokcalError: expected --device cpu, cuda or cuda:N, got 'gpu'
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TokcalError(f"expected --max-tokens >= 1, got {max_tokens!r}")
    if tokenizer is not None:
        _check_tokenizer_path(tokenizer)
    if dtype is not None and dtype not in _DTYPES:
        raise TokcalError(f"expected --dtype one of {', '.join(_DTYPES)}, got {dtype!r}")
    if device is None:
        return
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", str(device))
    if m is None:
        raise TokcalError(f"expected --device cpu, cuda or cuda:N, got {device!r}")
    import torch

    if m.group(1) == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise TokcalError(f"--device {device}: this machine has no CUDA GPU; use --device cpu")
        if m.group(2) is not None and int(m.group(2)) >= n:
            raise TokcalError(f"--device {device}: this machine has {n} GPU(s) (cuda:0..cuda:{n - 1})")
    if m.group(1) == "mps" and not torch.backends.mps.is_available():
        raise TokcalError(f"--device {device}: MPS is not available here; use --device cpu")


def _check_tokenizer_path(tokenizer: str | os.PathLike[str]) -> None:
    """``--tokenizer``: a folder, or a hub name; a path that is clearly local must exist."""
    text = os.fspath(tokenizer)
    p = Path(text).expanduser()
    if p.exists():
        if not p.is_dir():
            raise TokcalError(f"expected --tokenizer to be a tokenizer folder, got a file: {p}")
        return
    local = p.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)
    if local:
        raise TokcalError(f"tokenizer folder not found: {p} (--tokenizer); expected a folder with tokenizer_config.json")


# Files a tokenizer or processor is built from. Checkpoints of one run hold the same ones,
# so backfill builds their tokenizer once (about 2 s for Qwen2.5's 151,936 tokens) instead
# of once per checkpoint.
_TOKENIZER_FILE = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|"
                             r".*\.model|.*\.tiktoken|chat_template.*|(video_)?(pre)?processor_config\.json|config\.json)$")
_LOADED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_KEEP_LOADED = 2


def _files_digest(path: Path) -> str | None:
    """SHA-256 over the names and bytes of the tokenizer files in a local folder (``None``
    for anything else: a hub name is loaded as it is)."""
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and _TOKENIZER_FILE.match(f.name):
            h.update(f.name.encode("utf-8") + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def _cached(kind: str, path: str | Path, options: Mapping[str, Any], load: Callable[[], Any]) -> Any:
    """``load()``, or what it gave for a folder with the same tokenizer files and options
    (the last :data:`_KEEP_LOADED` kept). Scoring never changes a tokenizer, so one object
    serves every checkpoint that has those files."""
    digest = _files_digest(Path(path))
    if digest is None:
        return load()
    key = (kind, digest, tuple(sorted(options.items())))
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    obj = _LOADED[key] = load()
    while len(_LOADED) > _KEEP_LOADED:
        _LOADED.popitem(last=False)
    return obj


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer in ``path``; folders with the same tokenizer files share one object.

    Example:
        >>> tok = load_tokenizer("out/checkpoint-500")  # doctest: +SKIP
        >>> tok is load_tokenizer("out/checkpoint-1000")  # same files: built once  # doctest: +SKIP
        True
    """
    return _cached("tokenizer", path, {"trust_remote_code": trust_remote_code},
                   lambda: _load_tokenizer(path, trust_remote_code))


def _load_tokenizer(path: str | Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TokcalError(f"could not load a tokenizer from {path}: {first_line(exc)}; pass --tokenizer DIR") from exc


_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_warned_no_video = False


def load_processor(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Any:
    """The processor of a vision-language checkpoint (tokenizer + image processor);
    folders with the same processor files and bounds share one object.

    ``AutoProcessor`` first. Without torchvision, the video processor of Qwen2-VL-style
    processors cannot load (an ImportError); then the same processor class is built without
    its video slot, with one warning: images work, videos need torchvision.
    ``min_pixels``/``max_pixels`` override the image processor's resize bounds.

    Example:
        >>> processor = load_processor("out/checkpoint-400", max_pixels=28 * 28 * 256)  # doctest: +SKIP
        >>> processor.image_processor.size["longest_edge"]  # doctest: +SKIP
        200704
    """
    options = {"trust_remote_code": trust_remote_code, "min_pixels": min_pixels, "max_pixels": max_pixels}
    return _cached("processor", path, options,
                   lambda: _load_processor(path, trust_remote_code, min_pixels=min_pixels, max_pixels=max_pixels))


def _load_processor(path: str | Path, trust_remote_code: bool, *, min_pixels: int | None,
                    max_pixels: int | None) -> Any:
    from transformers import AutoProcessor

    p = Path(path)
    if not any((p / f).is_file() for f in _PROCESSOR_FILES):
        raise TokcalError(f"{p} has no processor (no {' or '.join(_PROCESSOR_FILES)}); an image data set needs "
                          "the checkpoint's processor: save it with the checkpoint or pass --tokenizer DIR")
    try:
        processor = AutoProcessor.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise TokcalError(f"could not load the processor in {p}: {first_line(exc)}") from exc
        processor = _processor_without_video(p, trust_remote_code)
        _warn_no_video(f"torchvision is not installed, so {type(processor).__name__}'s video processor cannot "
                       "load; scoring images without it (pip install torchvision for videos)")
    except OSError as exc:
        if "video processor" not in str(exc).lower():
            raise TokcalError(f"could not load the processor in {p}: {first_line(exc)}; pass --tokenizer DIR") from exc
        # Saved where torchvision was missing: the processor files have no video processor.
        processor = _processor_without_video(p, trust_remote_code)
        _warn_no_video(f"{p} holds no video processor (saved without torchvision); scoring images without it")
    except (ValueError, TypeError, KeyError) as exc:
        raise TokcalError(f"could not load the processor in {p}: {first_line(exc)}; pass --tokenizer DIR") from exc
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise TokcalError(f"the processor in {p} ({type(processor).__name__}) has no image processor and "
                          "tokenizer; expected a vision-language checkpoint")
    set_pixel_bounds(processor.image_processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return processor


def _warn_no_video(message: str) -> None:
    """One warning per process, however many checkpoints are loaded."""
    global _warned_no_video
    if not _warned_no_video:
        _warned_no_video = True
        warnings.warn(message, stacklevel=3)


def set_pixel_bounds(image_processor: Any, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the pixel range an image processor resizes into (``size.shortest_edge`` /
    ``size.longest_edge``, and ``min_pixels``/``max_pixels`` where it keeps them)."""
    if min_pixels is None and max_pixels is None:
        return
    size = getattr(image_processor, "size", None)
    changes = {k: v for k, v in (("shortest_edge", min_pixels), ("longest_edge", max_pixels)) if v is not None}
    if isinstance(size, dict):
        image_processor.size = {**size, **changes}
    elif size is not None and all(hasattr(size, k) for k in changes):
        for k, v in changes.items():
            setattr(size, k, v)
    else:
        raise TokcalError(f"{type(image_processor).__name__} has no pixel range to set; drop --min-pixels/--max-pixels")
    for attr, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if v is not None and getattr(image_processor, attr, None) is not None:
            setattr(image_processor, attr, v)


def _processor_class_name(p: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = p / name
        if f.is_file():
            try:
                cls = json.loads(f.read_text()).get("processor_class")
            except (ValueError, AttributeError):
                continue
            if cls:
                return str(cls)
    return None


def _processor_without_video(p: Path, trust_remote_code: bool) -> Any:
    """The checkpoint's processor class, loaded with its image processor and tokenizer only."""
    import inspect

    import transformers

    name = _processor_class_name(p)
    cls = getattr(transformers, name, None) if name else None
    if cls is None or "video_processor" not in inspect.signature(cls.__init__).parameters:
        raise TokcalError(f"the processor in {p} needs torchvision to load ({name or 'unknown class'}); "
                          "pip install torchvision")

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    images_only = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})
    try:
        return images_only.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for a bad processor folder
        raise TokcalError(f"could not load the processor in {p} without torchvision: {first_line(exc)}; "
                          "pip install torchvision") from exc


def is_vision_language(path: str | Path) -> bool:
    """Whether ``path/config.json`` describes a vision-language model (a ``vision_config``)."""
    cfg = Path(path) / "config.json"
    try:
        return "vision_config" in json.loads(cfg.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _auto_class(path: str | Path) -> Any:
    import transformers

    return transformers.AutoModelForImageTextToText if is_vision_language(path) else transformers.AutoModelForCausalLM


def load_checkpoint(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    processor_options: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a checkpoint folder for scoring.

    Full fine-tunes load from safetensors (sharded too); PEFT adapters load their base model
    (``base_model_name_or_path``) plus the adapter. Vision-language checkpoints load with
    ``AutoModelForImageTextToText``. bf16 on CUDA, float32 on CPU unless ``dtype`` is given.
    With ``processor_options`` (``min_pixels``/``max_pixels``; ``{}`` for the defaults),
    the second item is the checkpoint's processor (:func:`load_processor`) instead.

    Example:
        >>> model, tok = load_checkpoint("out/checkpoint-500")  # doctest: +SKIP
        >>> model, processor = load_checkpoint("out/checkpoint-500", processor_options={})  # doctest: +SKIP
    """
    import torch

    info = inspect_checkpoint(path, allow_pickle=allow_pickle)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    kw: dict[str, Any] = dict(trust_remote_code=trust_remote_code, dtype=torch_dtype,
                              use_safetensors=not info.pickle)
    # The tokenizer first: a problem with it shows before the weights load.
    tok = checkpoint_tokenizer(info, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                               processor_options=processor_options)
    try:
        if info.kind == "adapter":
            model = _load_adapter(info.path, kw)
        else:
            model = _auto_class(info.path).from_pretrained(str(info.path), **kw)
    except TokcalError:
        raise
    except Exception as exc:  # transformers raises many types for a bad checkpoint
        raise TokcalError(f"could not load the model in {info.path}: {first_line(exc)}") from exc
    model.to(dev)
    model.eval()
    return model, tok


def checkpoint_tokenizer(
    checkpoint: str | Path | CheckpointInfo,
    *,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    processor_options: Mapping[str, Any] | None = None,
) -> Any:
    """The tokenizer (or, with ``processor_options``, the processor) that
    :func:`load_checkpoint` scores a checkpoint with, without loading its model: ``tokenizer``
    when given, else the checkpoint's own (an adapter without one: its base model's).

    Example:
        >>> tok = checkpoint_tokenizer("out/checkpoint-500")  # doctest: +SKIP
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else inspect_checkpoint(
        checkpoint, allow_pickle=allow_pickle)
    tok_src = tokenizer or info.path
    if tokenizer is None and info.kind == "adapter" and not any(
            (info.path / f).is_file() for f in ("tokenizer_config.json", *_PROCESSOR_FILES)):
        tok_src = _adapter_base(info.path)
    if processor_options is not None:
        return load_processor(tok_src, trust_remote_code=trust_remote_code, **dict(processor_options))
    return load_tokenizer(tok_src, trust_remote_code=trust_remote_code)


def _adapter_base(path: Path) -> str:
    cfg = json.loads((path / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise TokcalError(f"{path}/adapter_config.json names no base_model_name_or_path")
    return str(base)


def _load_adapter(path: Path, kw: dict[str, Any]) -> Any:
    from tokcal.errors import require

    peft = require("peft", "peft")
    base_path = _adapter_base(path)
    if Path(base_path).is_dir():
        inspect_checkpoint(base_path, allow_pickle=not kw["use_safetensors"])
    base = _auto_class(base_path).from_pretrained(base_path, **kw)
    model = peft.PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload()


_STEP_RE = re.compile(r"checkpoint-(\d+)$")


def checkpoint_step(path: str | Path) -> int:
    """The global step of a checkpoint: ``trainer_state.json``, else the folder name."""
    p = Path(path)
    state = p / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; taking the step from the folder name", state)
    m = _STEP_RE.search(p.name)
    if not m:
        raise TokcalError(f"cannot tell the step of {p}: no trainer_state.json and not named checkpoint-N")
    return int(m.group(1))


def find_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders under ``output_dir``, in step order."""
    root = Path(output_dir)
    if not root.is_dir():
        raise TokcalError(f"output folder not found: {root}")
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_RE.search(p.name)]
    return sorted(found, key=lambda p: int(_STEP_RE.search(p.name).group(1)))  # type: ignore[union-attr]


_GLOB_CHARS = "*?["


def _looks_like_checkpoint(p: Path) -> bool:
    return any((p / f).is_file() for f in ("config.json", "adapter_config.json", "trainer_state.json")) or (
        p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit()
    )


def resolve_checkpoints(sources: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, int]]:
    """``(folder, step)`` in step order from output folders, checkpoint folders or globs.

    An output folder stands for its ``checkpoint-N`` sub-folders; a glob for its matching
    folders. The step is ``trainer_state.json``'s ``global_step`` (else the folder's name as
    given: a symlink's own name, not its target's).
    Paths are absolute but links are kept as given (a folder of links to a shared run's
    checkpoints stays that folder); one checkpoint reached twice counts once.

    Raises:
        TokcalError: nothing found, a path that does not exist, a step that cannot be told,
            or two checkpoints with the same step.
    """
    found: dict[Path, Path] = {}  # the real folder -> the path it was given as (absolute)

    def add(paths: Iterable[Path]) -> None:
        for q in paths:
            found.setdefault(q.resolve(), Path(os.path.abspath(q)))

    sources = list(sources)
    if not sources:
        raise TokcalError("no checkpoints given; expected an output folder, checkpoint folders or a glob")
    for src in sources:
        text = str(src)
        if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
            matches = [Path(m) for m in sorted(glob.glob(text)) if Path(m).is_dir()]
            if not matches:
                raise TokcalError(f"no checkpoint folder matches {text!r}")
            add(matches)
            continue
        p = Path(text)
        if not p.exists():
            raise TokcalError(f"checkpoint or output folder not found: {p}")
        if not p.is_dir():
            raise TokcalError(f"expected a checkpoint or output folder, got a file: {p}")
        subs = find_checkpoints(p)
        if not subs and _looks_like_checkpoint(p):
            add([p])
            continue
        # An output folder stands for its checkpoints, also when it holds the final model
        # too (LLaMA-Factory and Trainer.save_model write one there).
        if not subs:
            raise TokcalError(f"no checkpoint-N folders in {p}; expected the Trainer's output_dir or checkpoint paths")
        add(subs)
    # The step from trainer_state.json, else the name as given: a symlink checkpoint-N to a
    # folder named otherwise (a snapshot, a hash) is step N.
    plan = sorted(((p, checkpoint_step(p)) for p in found.values()), key=lambda x: (x[1], str(x[0])))
    for (a, sa), (b, sb) in zip(plan, plan[1:]):
        if sa == sb:
            raise TokcalError(f"{a} and {b} are both step {sa}; expected one checkpoint per step (pass one of them)")
    return plan


# ------------------------------------------------------------------- run and settings
