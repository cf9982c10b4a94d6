"""Time ``compute_metrics`` on 10k, 100k and 1M decisions (binary and 4 labels).

Run: ``python benchmarks/bench_metrics.py [--repeat 3]``; prints the best of the repeats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tracking.core.metrics import compute_metrics


def make(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0.5, 1.0, size=(n, 1))
    return p, rng.integers(0, k, size=n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'N':>9} {'K':>2} {'best s':>8} {'us/decision':>12}")
    for k, labels in [(2, ["Accept", "Reject"]), (4, ["A", "B", "C", "D"])]:
        for n in (10_000, 100_000, 1_000_000):
            p, gt = make(n, k)
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                compute_metrics(p, gt, labels)
                best = min(best, time.perf_counter() - t0)
            print(f"{n:>9} {k:>2} {best:>8.3f} {1e6 * best / n:>12.2f}")


if __name__ == "__main__":
    main()
