"""Fixtures for the LLaMA-Factory tests; these run only where ``llamafactory`` is installed
(``make test-llamafactory`` builds that environment in ``.venv-lf``).

``lf_tiny``: a tiny Qwen2 model (real Qwen2.5 tokenizer) and an alpaca data set in a
``dataset_info.json``, once per session. ``lf_train``: runs the real ``tokcal train`` on
``configs/llamafactory_tiny_cpu.yaml`` (paths and other keys overridden on its command
line) in a subprocess, and returns the output folder.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

from tests.helpers.processes import run_group

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "llamafactory_tiny_cpu.yaml"
VL_CONFIG = REPO / "configs" / "llamafactory_tiny_vl_cpu.yaml"
HAVE_LF = importlib.util.find_spec("llamafactory") is not None
#: Every test module here starts with ``pytestmark = needs_llamafactory``.
needs_llamafactory = pytest.mark.skipif(
    not HAVE_LF, reason="llamafactory is not installed; run 'make test-llamafactory'"
)
TRAIN_TIMEOUT_S = 600


def lf_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_RUN_ID", None)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", LLAMAFACTORY_VERBOSITY="WARN",
               WANDB_MODE="disabled", DISABLE_VERSION_CHECK="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def lf_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model/`` and ``data/`` (see ``tests/llamafactory/make_tiny.py``)."""
    if not HAVE_LF:
        pytest.skip("llamafactory is not installed")
    from tests.llamafactory.make_tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("lf-tiny"))


def tiny_overrides(tiny: Path, out: Path) -> list[str]:
    return [f"model_name_or_path={tiny / 'model'}", f"dataset_dir={tiny / 'data'}", f"output_dir={out}"]


#: How close tokcal's numbers must be across the callback, extract and backfill.
TOL = 1e-5


def close(a: float | None, b: float | None, tol: float = TOL) -> bool:
    """Equal within ``tol``; None and NaN (a metric that could not be computed) equal each other."""
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(float(a) - float(b)) <= tol


def lf_args(tiny: Path, run: Path, config: Path = CONFIG) -> list[str]:
    """``--llamafactory-config`` and the ``--llamafactory-set`` overrides that point the
    config at the tiny model, its data and the run's output folder."""
    args = ["--llamafactory-config", str(config)]
    for item in tiny_overrides(tiny, run):
        args += ["--llamafactory-set", item]
    return args


def local_store(run: Path) -> tuple[Path, list[dict]]:
    """The local run that the training callback recorded in ``run/tokcal.json``, and its
    evaluations."""
    from tokcal.jobs.state import read_state
    from tokcal.trackers.local import read_local_store

    (tracker,) = read_state(run / "tokcal.json")["trackers"]
    assert tracker["backend"] == "local"
    return Path(tracker["local_dir"]), read_local_store(tracker["local_dir"])


def run_tokcal_train(tiny: Path, out: Path, overrides: Sequence[str] = (), *, config: Path = CONFIG,
                     **env: str) -> subprocess.CompletedProcess:
    """``tokcal train <config> <paths> <overrides>`` (default configs/llamafactory_tiny_cpu.yaml);
    fails the test with the log tail when it fails."""
    tokcal = Path(sys.executable).with_name("tokcal")
    cmd = [str(tokcal), "train", str(config), *tiny_overrides(tiny, out), *overrides]
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = run_group(cmd, out.parent, lf_env(**env), TRAIN_TIMEOUT_S)
    (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"tokcal train failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def lf_train(lf_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``lf_train(name, *overrides, **env)`` -> the output folder of a real training run."""

    def train(name: str, *overrides: str, **env: str) -> Path:
        out = tmp_path_factory.mktemp(f"lf-{name}") / "out"
        run_tokcal_train(lf_tiny, out, overrides, **env)
        return out

    return train


@pytest.fixture(scope="session")
def lf_tiny_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model/`` (tiny Qwen2.5-VL + processor) and ``data/`` (page images, sharegpt with an
    ``images`` column), see ``tests/llamafactory/make_tiny.py``."""
    if not HAVE_LF:
        pytest.skip("llamafactory is not installed")
    from tests.llamafactory.make_tiny import make_tiny_vl

    return make_tiny_vl(tmp_path_factory.mktemp("lf-tiny-vl"))
