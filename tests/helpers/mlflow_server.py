"""A real ``mlflow server`` (sqlite backend, 127.0.0.1, a free port) for the tests.

``mlflow_server`` is started once per test session and yields its URI;
``mlflow_server_process`` is a separate, function-scoped server that a test may stop and
start again (same port, same database) to simulate an outage. Both are stopped by the
PID of the process group they were started in.

The server's job runner (a Huey worker pool MLflow 3 starts by default) is switched off:
the tests do not use it and it triples the start-up time on a small machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["MlflowServer", "free_port", "mlflow_server", "mlflow_server_process"]

START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """One ``mlflow server`` process group with a sqlite store under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "server.log"

    def start(self) -> "MlflowServer":
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True)
        log.close()
        self._wait_up()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} in {START_TIMEOUT_S:.0f} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group (the server and its uvicorn worker), then SIGKILL."""
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            os.killpg(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # children that outlived the leader
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real MLflow tracking server shared by the whole session."""
    pytest.importorskip("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def mlflow_server_process(tmp_path: Path) -> Iterator[MlflowServer]:
    """A server of this test's own, which the test may ``stop()`` and ``start()`` again."""
    pytest.importorskip("mlflow")
    server = MlflowServer(tmp_path / "mlflow-server").start()
    try:
        yield server
    finally:
        server.stop()
