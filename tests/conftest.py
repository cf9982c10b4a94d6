"""Shared fixtures; each helper module under tests/helpers owns its own."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
from tests.helpers.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401
from tests.helpers.models import *  # noqa: F401,F403  (tokenizer and tiny-checkpoint fixtures)
