"""The distributed launch: ``torchrun --nproc_per_node 2 -m tokcal.callbacks.llamafactory CONFIG.yaml``
(DDP on CPU, gloo). Each rank captures its share of the eval logits; rank 0 logs all of them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.mlflow_server import free_port
from tests.llamafactory.conftest import (
    CONFIG,
    close,
    lf_args,
    lf_env,
    local_store,
    needs_llamafactory,
    run_group,
    tiny_overrides,
)
from tests.llamafactory.test_lf_local import STEPS

pytestmark = [needs_llamafactory, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(lf_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lf-torchrun") / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "tokcal.callbacks.llamafactory",
           str(CONFIG), *tiny_overrides(lf_tiny, out), "report_to=none", "decision_log_samples=true"]
    proc = run_group(cmd, out.parent, lf_env(), 300)
    (out.parent / "torchrun.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return out


def test_two_ranks_log_every_sample_once_and_extract_agrees(run: Path, lf_tiny: Path, tmp_path: Path) -> None:
    from tokcal.cli.main import main
    run_dir, evals = local_store(run)
    assert [e["step"] for e in evals] == STEPS
    assert all(e["scalars"]["eval_decision_samples"] == 12 for e in evals)  # 6 per rank, gathered on rank 0
    last = evals[-1]
    cb_rows = [json.loads(x) for x in (run_dir / last["samples_file"]).read_text().splitlines()]
    assert sorted(r["sample_id"] for r in cb_rows) == list(range(12))
    out, metrics = tmp_path / "d.jsonl", tmp_path / "m.json"
    assert main(["extract", "--checkpoint", str(run / f"checkpoint-{STEPS[-1]}"), *lf_args(lf_tiny, run),
                 "--output", str(out), "--metrics", str(metrics), "--bins", "10"]) == 0
    got = json.loads(metrics.read_text())["scalars"]
    assert not {k: (v, last["scalars"][k]) for k, v in got.items() if not close(v, last["scalars"][k])}
    by_id = {r["sample_id"]: r for r in cb_rows}
    for r in (json.loads(x) for x in out.read_text().splitlines()):
        assert close(r["p_accept"], by_id[r["sample_id"]]["p_accept"], 1e-7)
