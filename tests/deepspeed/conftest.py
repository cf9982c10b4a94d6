"""Fixtures for the DeepSpeed ZeRO-3 tests; these run only where ``deepspeed`` is installed
(``make test-deepspeed`` builds that environment in ``.venv-ds``).

``zero3_run``: one real ``torchrun --nproc_per_node 2`` training under ZeRO-3 on CPU (gloo,
``DS_ACCELERATOR=cpu``) of ``tests/scripts/zero3_callback.py``, once per session; its output
folder has ``checkpoint-N`` folders (consolidated weights), ``shards/checkpoint-N`` (ZeRO
shards only), ``eval.jsonl`` and the two callbacks' local stores ``hook/`` and ``pass/``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

from tests.helpers.processes import run_group, torchrun_cmd

REPO = Path(__file__).resolve().parents[2]
HAVE_DS = importlib.util.find_spec("deepspeed") is not None
#: Every test module here starts with ``pytestmark = needs_deepspeed``.
needs_deepspeed = pytest.mark.skipif(not HAVE_DS, reason="deepspeed is not installed; run 'make test-deepspeed'")
TORCHRUN_TIMEOUT_S = 420  # the first run compiles DeepSpeed's CPU communication op (about 60 s)


def ds_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg",
               WANDB_MODE="disabled")
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def torchrun(args: Sequence[str], log: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m ARGS...`` on 127.0.0.1; its output goes to ``log``. Fails
    the test with the log's tail when it fails or times out."""
    proc = run_group(torchrun_cmd(*args), REPO, ds_env(), TORCHRUN_TIMEOUT_S)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"torchrun {' '.join(args[:2])} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def zero3_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_DS:
        pytest.skip("deepspeed is not installed")
    from tests.helpers.models import make_tiny_checkpoint
    from tests.helpers.tokenizers import small_bpe_tokenizer

    root = tmp_path_factory.mktemp("zero3")
    base = make_tiny_checkpoint(root / "base", small_bpe_tokenizer(), seed=0)
    out = root / "out"
    torchrun(["tests.scripts.zero3_callback", str(base), str(out)], root / "torchrun.log")
    return out
