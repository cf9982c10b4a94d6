"""Shared fixtures; each helper module under tests/helpers owns its own."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
import sys  # noqa: E402

import pytest  # noqa: E402

from tests.helpers.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401
from tests.helpers.models import *  # noqa: F401,F403  (tokenizer and tiny-checkpoint fixtures)
from tests.helpers.wandb_reader import wandb_offline  # noqa: F401


@pytest.fixture(autouse=True)
def _no_wandb_run_leaks_between_tests():
    """W&B keeps one global run and its settings (WANDB_DIR ...) per process; a test that left
    them would make the next test's Trainer log into the old run or folder. Reset both."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if getattr(wandb, "run", None) is not None:
            wandb.run.finish()
        wandb.teardown()
