"""Scoring engines: how a checkpoint is run to score decisions.

``hf`` (the default) loads the checkpoint with transformers; ``vllm`` runs it in vLLM (an
optional extra). Both score the same tokens of the same eval set and give the same
:class:`~tokcal.core.scores.DecisionScores`; see :mod:`tokcal.engines.base`.

Example:
    >>> get_engine("hf").name
    'hf'
    >>> get_engine("tgi")
    Traceback (most recent call last):
    ...
    tokcal.errors.TokcalError: expected engine 'hf' or 'vllm', got 'tgi'
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from tokcal.engines.base import MODES, Engine, check_mode
from tokcal.errors import TokcalError

#: Engine name -> (module, class), the default first; imported only when asked for.
_REGISTRY = {"hf": ("tokcal.engines.hf", "HFEngine"), "vllm": ("tokcal.engines.vllm", "VLLMEngine")}
ENGINES = tuple(_REGISTRY)

__all__ = ["ENGINES", "MODES", "Engine", "check_mode", "get_engine"]


def get_engine(name: str = "hf", options: Mapping[str, Any] | None = None) -> Engine:
    """The engine of that name; ``options`` are the engine's own (vLLM's engine arguments)."""
    if name not in _REGISTRY:
        raise TokcalError(f"expected engine {' or '.join(repr(n) for n in ENGINES)}, got {name!r}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(options)
