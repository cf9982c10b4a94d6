"""Simulated fine-tuning runs with per-sample records, for the report's per-sample views and
the comparisons (tests, benchmarks and the docs' screenshots). No model: numpy draws each sample's P(label) per step
so that the decision mass climbs, accuracy rises and confidence sharpens; a few samples
are mislabelled (their "truth" is the other label), so the model ends confidently wrong
on them, and some samples are learned, forgotten and learned again.

Logged through a real tracker's ``log_evaluation(metrics, step, per_sample=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokcal.core.metrics import compute_metrics
from tokcal.core.per_sample import PerSample

LABELS = ["Accept", "Reject"]
_WORDS = ["novel", "sound", "unclear", "incremental", "strong", "weak", "baselines", "ablation", "<proof>", "&"]

__all__ = ["LABELS", "SimulatedRun", "simulate_run"]


@dataclass
class SimulatedRun:
    """What was logged: the per-sample record of each step."""

    steps: list[int]
    records: dict[int, PerSample]


def simulate_run(tracker, *, seed: int, steps: list[int], n: int = 200, skill: float = 1.0,
                 drop_at: int | None = None, text: bool = True, prefix: str = "eval_",
                 data_seed: int | None = None) -> SimulatedRun:
    """Log one simulated run: ``len(steps)`` evaluations of ``n`` samples.

    Args:
        skill: how far the model gets (higher: more accurate, sharper, sooner).
        drop_at: a step at which a tenth of the samples is left out of the evaluation.
        text: keep a short synthetic review text per sample.
        data_seed: the eval set's seed (its labels, difficulty, texts); runs with the same
            one scored the same samples, so they can be compared pair by pair. Default: ``seed``.
    """
    rng = np.random.default_rng(seed)
    data = rng if data_seed is None else np.random.default_rng(data_seed)
    gt = data.integers(0, 2, n)
    difficulty = data.normal(0.0, 1.2, n)
    mislabelled = data.random(n) < 0.06
    texts = [f"Review {i}: " + " ".join(data.choice(_WORDS, 6)) for i in range(n)] if text else None
    records = {}
    last = max(steps) or 1
    for step in steps:
        frac = step / last
        idx = np.arange(n)
        if drop_at == step:
            idx = np.sort(rng.choice(n, n - n // 10, replace=False))
        # logit of the (real) right answer: grows with training, minus the sample's difficulty
        logit = skill * (5.0 * frac ** 0.8) - difficulty[idx] * (0.5 + frac) + rng.normal(0, 0.8, len(idx))
        # mislabelled: sure of the real answer, which the "truth" calls wrong
        logit = np.where(mislabelled[idx], skill * 4.0 * frac + rng.normal(0, 0.7, len(idx)), logit)
        p_real = 1 / (1 + np.exp(-logit))
        mass = np.clip(0.2 + 0.78 * frac ** 0.5 + rng.normal(0, 0.02, len(idx)), 0.01, 0.999)
        g = gt[idx]
        real = np.where(mislabelled[idx], 1 - g, g)
        probs = np.zeros((len(idx), 2))
        probs[np.arange(len(idx)), real] = p_real * mass
        probs[np.arange(len(idx)), 1 - real] = (1 - p_real) * mass
        probs = np.round(probs, 6)  # what the record keeps (6 significant digits)
        m = compute_metrics(probs, g, LABELS, prefix=prefix)
        rec = PerSample(LABELS, idx, g, probs, text=None if texts is None else [texts[i] for i in idx])
        tracker.log_evaluation(m, step, per_sample=rec)
        records[step] = rec
    return SimulatedRun(list(steps), records)
