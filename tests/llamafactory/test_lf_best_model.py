"""A real LLaMA-Factory run steered by a tokcal metric from the YAML alone:
``metric_for_best_model: eval_decision_accuracy``, ``load_best_model_at_end`` and
LLaMA-Factory's ``early_stopping_steps`` (its EarlyStoppingCallback comes after tokcal's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.llamafactory.conftest import needs_llamafactory

pytestmark = [needs_llamafactory, pytest.mark.slow]

ACC = "eval_decision_accuracy"
MAX_STEPS = 6


def test_best_checkpoint_and_early_stopping_by_decision_accuracy(lf_train) -> None:
    out = lf_train("best", "report_to=none", "eval_steps=1", "save_steps=1", f"max_steps={MAX_STEPS}",
                   "learning_rate=1.0e-2", f"metric_for_best_model={ACC}", "load_best_model_at_end=true",
                   "early_stopping_steps=1")
    state = json.loads((out / "trainer_state.json").read_text())
    acc: dict[int, float] = {}
    for h in state["log_history"]:
        if ACC in h and "eval_loss" not in h:  # tokcal's entries (LF's final do_eval is not logged again)
            acc.setdefault(h["step"], h[ACC])
    steps = sorted(acc)
    assert steps == list(range(1, len(steps) + 1))
    # EarlyStoppingCallback's rule: stop at the first evaluation that does not beat the best so far.
    stop = next((s for i, s in enumerate(steps) if i and acc[s] <= max(acc[t] for t in steps[:i])), MAX_STEPS)
    assert state["global_step"] == steps[-1] == stop < MAX_STEPS  # it stopped, so it found the metric
    best = max(acc.values())
    best_step = min(s for s in steps if acc[s] == best)
    assert state["best_metric"] == best
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best_step}"
    # LLaMA-Factory's eval after training repeats the best step (load_best_model_at_end), so
    # tokcal skips it (docs/llamafactory.md): its results hold the Trainer's numbers only.
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_loss"] > 0 and ACC not in results
