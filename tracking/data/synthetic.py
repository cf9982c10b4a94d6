"""A synthetic accept/reject task: short paper reviews whose wording decides the outcome.

Used by the demo and the tests. Some labels are flipped (``noise``) so a model cannot be
perfectly sure, which keeps calibration interesting.
"""

from __future__ import annotations

import random
from typing import Any

POSITIVE = ["novel", "rigorous", "clear", "convincing", "thorough", "elegant", "strong", "original"]
NEGATIVE = ["flawed", "unclear", "incremental", "weak", "sloppy", "unconvincing", "limited", "confusing"]
NEUTRAL = ["method", "paper", "analysis", "evaluation", "writing", "related work", "ablation", "theory"]
SYSTEM = "You are a meta-reviewer. Answer with \\boxed{Accept} or \\boxed{Reject}."


def review_records(n: int, *, seed: int = 0, noise: float = 0.1, labels: tuple[str, str] = ("Accept", "Reject")) -> list[dict[str, Any]]:
    """``n`` records in the ``messages`` format, roughly balanced.

    Example:
        >>> recs = review_records(4, seed=1)
        >>> recs[0]["messages"][-1]["content"].startswith("Decision:")
        True
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = rng.random() < 0.5
        words = POSITIVE if good else NEGATIVE
        k = rng.randint(2, 4)
        parts = [f"The {rng.choice(NEUTRAL)} is {rng.choice(words)}." for _ in range(k)]
        if rng.random() < 0.3:  # a contrary remark makes some reviews harder
            other = NEGATIVE if good else POSITIVE
            parts.insert(rng.randint(0, k), f"The {rng.choice(NEUTRAL)} is somewhat {rng.choice(other)}.")
        label = labels[0] if good else labels[1]
        if rng.random() < noise:
            label = labels[1] if good else labels[0]
        out.append({
            "id": f"r{seed}-{i}",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Review: " + " ".join(parts)},
                {"role": "assistant", "content": f"Decision: \\boxed{{{label}}}"},
            ],
        })
    return out
