"""Subprocesses for the tests: a command in its own process group, killed whole on timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest


def run_group(cmd: Sequence[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new process group that is killed whole on timeout (torchrun's
    workers would otherwise outlive it); a timeout fails the test with the output's tail."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:3])} ... timed out after {timeout:.0f} s:\n{(out + err)[-4000:]}")
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def torchrun_cmd(*module_args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N ... -m MODULE ARGS...`` on
    127.0.0.1, on a free port."""
    from tests.helpers.mlflow_server import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), "-m", *module_args]
