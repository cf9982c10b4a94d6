"""A tiny real training that saves checkpoints, with the tokcal callback, for ``--watch`` tests.

    python -m tests.scripts.train_saving BASE OUT EVAL_JSONL BACKEND EVAL(no|steps) [KEY=VALUE ...]
"""

import sys
from pathlib import Path

from tokcal import DecisionTrackingCallback

from tests.helpers.training import train_tiny

if __name__ == "__main__":
    base, out, eval_data, backend, eval_strategy = sys.argv[1:6]
    extra = {}
    for item in sys.argv[6:]:
        key, _, value = item.partition("=")
        extra[key] = int(value) if value.lstrip("-").isdigit() else value
    cb = DecisionTrackingCallback(backend=backend)
    train_tiny(Path(base), Path(out), callbacks=[cb], eval_data=Path(eval_data), eval_strategy=eval_strategy,
               **{"n_train": 16, "n_eval": 9, "max_steps": 6, "eval_steps": 2, **extra})
    cb.close()
