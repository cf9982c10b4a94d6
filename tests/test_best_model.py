"""tokcal's metrics steer training: metric_for_best_model, save_strategy="best",
load_best_model_at_end and EarlyStoppingCallback on real tiny Trainer runs (one process and
torchrun with two), and the per-evaluation flips against scoring each saved checkpoint.

The runs use a learning rate (1e-2) at which the tiny model's decision swings between the
two labels in the first steps, so the decision accuracy is not monotone: the best
checkpoint is neither the first nor the last one.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from transformers import EarlyStoppingCallback

from tokcal import DecisionTrackingCallback
from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.processes import torchrun_cmd
from tests.helpers.tokenizers import small_bpe_tokenizer
from tests.helpers.training import train_tiny
from tokcal.core.spec import DecisionSpec
from tokcal.jobs.extract import score_checkpoint

pytestmark = pytest.mark.slow

ACC = "eval_decision_accuracy"
STEERING = dict(eval_steps=1, learning_rate=1e-2, metric_for_best_model=ACC)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", small_bpe_tokenizer(), seed=0)


def ours(history: list[dict], key: str = ACC) -> dict[int, float]:
    """tokcal's entries of log_history (the Trainer's own eval entries have eval_loss); the
    first one per step, i.e. not an evaluate() after training at the last step."""
    out: dict[int, float] = {}
    for h in history:
        if key in h and "eval_loss" not in h:
            out.setdefault(h["step"], h[key])
    return out


def first_best(acc: dict[int, float]) -> int:
    """The Trainer's rule (np.greater: strictly better replaces): the first step with the max."""
    best = max(acc.values())
    return min(s for s, a in acc.items() if a == best)


def checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def test_load_best_model_by_decision_accuracy_and_flips(base_ckpt, tmp_path):
    out = tmp_path / "out"
    trainer = train_tiny(base_ckpt, out, callbacks=[DecisionTrackingCallback(backend="local")], max_steps=4,
                         load_best_model_at_end=True, **STEERING)
    history = list(trainer.state.log_history)  # before the evaluation below adds one more at step 4
    acc = ours(history)
    assert sorted(acc) == [1, 2, 3, 4]
    best = first_best(acc)
    assert 1 < best < 4, acc  # the run really has a best that is neither end
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best}")
    assert trainer.state.best_metric == acc[best]
    # The model loaded at the end is the best one: tokcal's number for it, and the checkpoint rescored.
    assert trainer.evaluate()[ACC] == acc[best]
    rescored = score_checkpoint(out / f"checkpoint-{best}", out / "eval.jsonl", DecisionSpec(), progress=False)
    assert rescored.metrics().scalars[ACC] == pytest.approx(acc[best], abs=1e-12)

    # Flips since the previous evaluation: every saved checkpoint rescored, compared by hand.
    correct = {}
    for step in checkpoints(out):
        sc = score_checkpoint(out / f"checkpoint-{step}", out / "eval.jsonl", DecisionSpec(), progress=False)
        correct[step] = dict(zip(sc.sample_index.tolist(), (sc.probs.argmax(axis=1) == sc.gt).tolist()))
    assert sorted(correct) == [1, 2, 3, 4]
    logged = {h["step"]: h for h in history if ACC in h and "eval_loss" not in h}
    assert "eval_decision_flips_to_wrong" not in logged[1]  # nothing to compare with yet
    ever = {i: c for i, c in correct[1].items()}
    total_flips = 0
    for prev, step in zip([1, 2, 3], [2, 3, 4]):
        to_wrong = sum(correct[prev][i] and not c for i, c in correct[step].items())
        to_right = sum(not correct[prev][i] and c for i, c in correct[step].items())
        forgotten = sum(not c and ever[i] for i, c in correct[step].items())
        for i, c in correct[step].items():
            ever[i] = ever[i] or c
        h = logged[step]
        assert (h["eval_decision_flips_to_wrong"], h["eval_decision_flips_to_right"],
                h["eval_decision_forgotten"]) == (to_wrong, to_right, forgotten), step
        total_flips += to_wrong + to_right
    assert total_flips > 0  # the swings are real flips, not a test of zeros


def test_early_stopping_and_save_best_on_a_tokcal_metric(base_ckpt, tmp_path):
    """EarlyStoppingCallback after tokcal's callback stops on the decision accuracy;
    save_strategy="best" saves only the checkpoints that improved it. The Trainer's own
    compute_metrics returns a key tokcal also has: its value is kept."""
    out = tmp_path / "out"
    stopper = EarlyStoppingCallback(early_stopping_patience=1)
    trainer = train_tiny(base_ckpt, out, callbacks=[DecisionTrackingCallback(backend="local"), stopper], max_steps=6,
                         save_strategy="best", load_best_model_at_end=True,
                         compute_metrics=lambda pred: {"decision_mcc": 123.0}, **STEERING)
    acc = ours(trainer.state.log_history)
    steps = sorted(acc)
    # EarlyStoppingCallback's rule: stop at the first evaluation that does not beat the best so far.
    stop = next(s for i, s in enumerate(steps) if i and acc[s] <= max(acc[t] for t in steps[:i]))
    assert trainer.state.global_step == stop < 6
    improved = [s for i, s in enumerate(steps) if i == 0 or acc[s] > max(acc[t] for t in steps[:i])]
    assert checkpoints(out) == improved
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{improved[-1]}")
    trainer_entries = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert trainer_entries and all(h["eval_decision_mcc"] == 123.0 for h in trainer_entries)
    assert all(v != 123.0 for v in ours(trainer.state.log_history, "eval_decision_mcc").values())


def test_metric_for_best_model_without_the_eval_prefix(base_ckpt, tmp_path):
    """metric_for_best_model: decision_balanced_accuracy (the Trainer adds eval_)."""
    trainer = train_tiny(base_ckpt, tmp_path / "out", callbacks=[DecisionTrackingCallback(backend="local")],
                         max_steps=2, load_best_model_at_end=True,
                         **{**STEERING, "metric_for_best_model": "decision_balanced_accuracy"})
    bal = ours(trainer.state.log_history, "eval_decision_balanced_accuracy")
    assert trainer.state.best_metric == bal[first_best(bal)]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{first_best(bal)}")


def test_torchrun_two_processes_keep_the_best_checkpoint(base_ckpt, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = torchrun_cmd("tests.scripts.ddp_best_model", str(base_ckpt), str(out))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    # Every rank's metrics dict held the same tokcal numbers, at every evaluation.
    assert json.dumps(r0["seen"]) == json.dumps(r1["seen"])  # NaN (an undefined precision) compares as text
    assert len(r0["seen"]) == 6  # 5 during training, 1 after
    assert all(ACC in seen and "eval_decision_mcc" in seen for seen in r0["seen"])
    acc = ours(r0["log_history"])
    assert sorted(acc) == [1, 2, 3, 4, 5]
    assert {s["step"]: s[ACC] for s in r0["seen"][:5]} == acc
    best = first_best(acc)
    assert 1 < best < 5, acc  # the accuracy moved: the best is neither the first nor the last
    assert r0["best_model_checkpoint"] == r1["best_model_checkpoint"] == str(out / f"checkpoint-{best}")
    assert r0["best_metric"] == r1["best_metric"] == acc[best]
    assert checkpoints(out) == [best]  # save_total_limit=1 with load_best_model_at_end keeps the best only
    assert r0["final_accuracy"] == r1["final_accuracy"] == acc[best]
    rescored = score_checkpoint(out / f"checkpoint-{best}", out / "eval.jsonl", DecisionSpec(), progress=False)
    assert rescored.metrics().scalars[ACC] == pytest.approx(acc[best], abs=1e-12)
    assert np.isfinite(r0["seen"][1]["eval_decision_flips_to_wrong"])
