"""Time ``compute_metrics`` on 10k, 100k and 1M decisions (binary and 4 labels).

Prints the best of ``--repeat`` runs. Not part of ``make bench`` (the 1M-decision runs take
a while on 2 cores); ``bench_logging.py`` times one evaluation of 10k decisions there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def make(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0.5, 1.0, size=(n, 1))
    return p, rng.integers(0, k, size=n)


def main() -> None:
    ap = common.parser(__doc__, "python benchmarks/bench_metrics.py --repeat 3")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the best is printed (default: 3)")
    args = ap.parse_args()
    from tokcal.core.metrics import compute_metrics

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
