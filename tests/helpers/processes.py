"""Subprocesses for the tests: a command in its own process group, killed whole on timeout."""

from __future__ import annotations

import os
import signal
import subprocess
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
