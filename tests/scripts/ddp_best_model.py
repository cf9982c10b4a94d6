"""Run under torchrun: a tiny Trainer run on 2 CPU processes (gloo) that keeps the checkpoint
with the best ``eval_decision_accuracy``. Each rank writes ``rank<r>.json`` with the metrics
dict it saw at every evaluation (after tokcal's callback) and its best checkpoint."""

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from tokcal import DecisionTrackingCallback
from tests.helpers.training import train_tiny


class Recorder(TrainerCallback):
    """Placed after tokcal's callback: what the Trainer's metrics dict holds on this rank."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self.seen.append({"step": state.global_step, **{k: v for k, v in (metrics or {}).items() if "decision" in k}})


if __name__ == "__main__":
    import torch.distributed as td

    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    rec = Recorder()
    trainer = train_tiny(base, out, callbacks=[DecisionTrackingCallback(backend="local"), rec], ddp_backend="gloo",
                         eval_steps=1, max_steps=5, learning_rate=1e-2, metric_for_best_model="eval_decision_accuracy",
                         load_best_model_at_end=True, save_total_limit=1)
    final = trainer.evaluate()  # the model loaded at the end: the best checkpoint's
    rank = td.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps({
        "seen": rec.seen,
        "best_model_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "final_accuracy": final["eval_decision_accuracy"],
        "log_history": trainer.state.log_history,
    }))
