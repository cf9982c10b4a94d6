"""Looking a run up never creates a tracking store: `tokcal backfill` and `tokcal report`
with an MLflow run id, run from another folder without --tracking-uri, stop with one line
naming the store they searched, and leave no `mlflow.db` behind. Real CLI processes, a
real sqlite store and a real MLflow server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.training import write_records

pytestmark = pytest.mark.slow  # a CLI process per case (MLflow imports: about 10 s each)

RECORDS = [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\\boxed{Accept}"}]}]


def tokcal(*argv: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # MLflow's own default store
    return subprocess.run([sys.executable, "-m", "tokcal", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def trained(tmp_path: Path, tiny_bpe_checkpoint: Path) -> tuple[Path, str]:
    """A training folder with its sqlite store holding a run, and a checkpoint."""
    import mlflow

    train = tmp_path / "train"
    shutil.copytree(tiny_bpe_checkpoint, train / "out" / "checkpoint-2")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{train / 'mlflow.db'}")
    run_id = client.create_run("0").info.run_id
    write_records(train / "eval.jsonl", RECORDS)
    return train, run_id


def one_error(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tokcal {command}: error: "), proc.stderr
    assert "Creating initial MLflow database tables" not in proc.stdout + proc.stderr
    return lines[0]


def test_a_run_looked_up_from_another_folder_creates_no_store(trained, tmp_path: Path):
    train, run_id = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    backfill = ["backfill", train / "out", "--data", train / "eval.jsonl", "--backend", "mlflow", "--run-id", run_id,
                "--quiet"]
    for argv, command in ((backfill, "backfill"), (["report", f"mlflow:{run_id}", "-o", "r.html"], "report")):
        line = one_error(tokcal(*argv, cwd=elsewhere), command)
        assert f"no MLflow store at sqlite:///{elsewhere / 'mlflow.db'}" in line, line  # the store it searched
        assert "--tracking-uri" in line and run_id in line
        assert list(elsewhere.iterdir()) == []  # no mlflow.db, no report
    # A relative store that is not there: its absolute path is named too.
    line = one_error(tokcal("report", run_id, "--tracking-uri", "sqlite:///runs/mlflow.db", cwd=elsewhere), "report")
    assert f"sqlite:///runs/mlflow.db ({elsewhere / 'runs' / 'mlflow.db'})" in line
    assert list(elsewhere.iterdir()) == []
    # The store that holds the run: found (the report then says the run has no tokcal metrics).
    line = one_error(tokcal("report", run_id, "--tracking-uri", f"sqlite:///{train / 'mlflow.db'}", cwd=elsewhere),
                     "report")
    assert "has no tokcal metrics" in line


def test_a_run_that_is_not_in_the_store_names_the_store(trained, mlflow_server: str, tmp_path: Path):
    train, _ = trained
    missing = "f" * 32
    store = f"sqlite:///{train / 'mlflow.db'}"
    for uri in (store, mlflow_server):
        line = one_error(tokcal("report", f"mlflow:{missing}", "--tracking-uri", uri, cwd=tmp_path), "report")
        assert f"could not open MLflow run '{missing}' at {uri}" in line, line
        assert "only that store was searched" in line and "--tracking-uri" in line
        line = one_error(tokcal("backfill", train / "out", "--data", train / "eval.jsonl", "--backend", "mlflow",
                                "--tracking-uri", uri, "--run-id", missing, "--quiet", cwd=tmp_path), "backfill")
        assert f"at {uri}" in line and "only that store was searched" in line, line
    assert not (tmp_path / "mlflow.db").exists()
