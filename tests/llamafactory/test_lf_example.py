"""examples/llamafactory/ as its README steps say: ``prepare.py`` writes the tiny model and the
data set, ``tokcal train examples/llamafactory/train.yaml`` trains with LLaMA-Factory, and the
numbers in the local store equal a plain full forward and softmax of each saved checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.llamafactory.conftest import REPO, local_store, needs_llamafactory, run_tokcal_train

pytestmark = [needs_llamafactory, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "llamafactory"
STEPS = [4, 8]  # eval_steps 4, max_steps 8 in examples/llamafactory/train.yaml
N_EVAL = 16  # prepare.py's default


def test_prepare_then_tokcal_train(tmp_path: Path) -> None:
    from tests.test_examples import oracle

    prep = tmp_path / "prep"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(EXAMPLE / "prepare.py"), "--out", str(prep)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (prep / "model" / "model.safetensors").is_file()
    info = json.loads((prep / "data" / "dataset_info.json").read_text())
    assert sorted(info) == ["reviews_eval", "reviews_train"]

    out = tmp_path / "run" / "out"
    run_tokcal_train(prep, out, config=EXAMPLE / "train.yaml")
    _, evals = local_store(out)
    assert [e["step"] for e in evals] == STEPS
    records = json.loads((prep / "data" / "reviews_eval.json").read_text())
    assert len(records) == N_EVAL
    for e in evals:
        s = e["scalars"]
        assert s["eval_decision_samples"] == N_EVAL and s["eval_decision_missing"] == 0
        want = oracle(out / f"checkpoint-{e['step']}", records, tokenizer=prep / "model")
        for key, value in want.items():
            assert s[f"eval_{key}"] == pytest.approx(value, abs=1e-5), (key, e["step"])
