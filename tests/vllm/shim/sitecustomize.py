"""Run vLLM's Qwen2.5-VL code where torchvision cannot load (the CPU test venv of
``make setup-vllm``: the torchvision wheels there are built for another torch).

Put this folder on ``PYTHONPATH``: every Python process started with it (the test's vLLM
process and the engine processes vLLM spawns) runs this file at start-up. It imports
nothing heavy itself; it adds one import hook, active only when torchvision is missing:

- ``transformers.models.qwen2_vl.image_processing_qwen2_vl``, the torchvision image
  processor module that vLLM's ``qwen2_vl.py`` imports for ``smart_resize``, is served by
  its PIL twin ``image_processing_pil_qwen2_vl`` (the same ``smart_resize`` code). The
  image processor itself is already the PIL one on both sides: transformers falls back to
  ``Qwen2VLImageProcessorPil`` for ``Qwen2VLImageProcessor`` when torchvision is missing,
  so the Hugging Face engine and vLLM resize the same way.
- ``Qwen2_5_VLProcessor`` loses its video slot (its video processor needs torchvision),
  as tokcal's own processor loader does: vLLM loads it with ``from_pretrained``, which
  builds a sub-processor for every ``__init__`` argument.
- vLLM's Qwen2-VL family (``Qwen2VLProcessingInfo``, which Qwen2.5-VL's inherits) then
  declares images as its only modality, so vLLM neither asks the processor for its video
  options nor profiles a dummy video at start-up. Images work; videos do not.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

#: module -> the module that serves it
ALIASES = {
    "transformers.models.qwen2_vl.image_processing_qwen2_vl":
        "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
}


def _drop_video_slot(module: Any) -> None:
    cls = module.Qwen2_5_VLProcessor
    init = cls.__init__

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        init(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    cls.__init__ = __init__  # from_pretrained reads the sub-processors off this signature


def _images_only(module: Any) -> None:
    info = module.Qwen2VLProcessingInfo  # Qwen2_5_VLProcessingInfo inherits it

    def get_supported_mm_limits(self: Any) -> dict[str, int | None]:
        return {"image": None}

    info.get_supported_mm_limits = get_supported_mm_limits


#: module -> what to change in it once it has run
PATCHES = {
    "transformers.models.qwen2_5_vl.processing_qwen2_5_vl": _drop_video_slot,
    "vllm.model_executor.models.qwen2_vl": _images_only,
}


class _Alias(importlib.abc.Loader):
    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(ALIASES[spec.name])

    def exec_module(self, module: Any) -> None:
        pass  # already run under its own name


class _Patched(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Any) -> None:
        self.loader, self.patch = loader, patch

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.patch(module)


class TorchvisionFreeQwenVL(importlib.abc.MetaPathFinder):
    """The import hook (first on ``sys.meta_path``)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name in ALIASES:
            return importlib.machinery.ModuleSpec(name, _Alias())
        if name in PATCHES:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _Patched(spec.loader, PATCHES[name])
            return spec
        return None


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, TorchvisionFreeQwenVL())
