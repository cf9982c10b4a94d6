"""Write small synthetic JSONL data sets for the examples (stand-ins for your own data).

Each line is one ``messages`` record, the shape most chat fine-tuning data already has::

    {"id": "r0-3", "messages": [
      {"role": "system", "content": "You are a meta-reviewer. ..."},
      {"role": "user", "content": "Review: The method is clear. The evaluation is weak."},
      {"role": "assistant", "content": "Decision: \\boxed{Reject}"}]}

The reviews are random sentences whose words lean positive or negative; 10 % of the labels
are flipped, so accuracy tops out near 0.9 and calibration has something to show.
``tokcal extract`` and ``tokcal backfill`` also read LLaMA-Factory's alpaca
(``instruction``/``input``/``output``) and sharegpt (``conversations``) records.

Run:
    python examples/sample_data.py --out examples-out/data   # train.jsonl eval.jsonl holdout.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_reviews(folder: Path, n_train: int = 200, n_eval: int = 32, n_holdout: int = 32,
                  seed: int = 0) -> dict[str, Path]:
    """``train.jsonl``, ``eval.jsonl`` and ``holdout.jsonl`` in ``folder``; returns their paths."""
    from tokcal.data.synthetic import review_records

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (name, n) in enumerate((("train", n_train), ("eval", n_eval), ("holdout", n_holdout))):
        records = review_records(n, seed=seed + i)
        for r in records:
            r["id"] = f"{name}-{r['id']}"
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for train.jsonl, eval.jsonl, holdout.jsonl")
    ap.add_argument("--train", type=int, default=200, help="training records (default: 200)")
    ap.add_argument("--eval", type=int, default=32, help="eval records (default: 32)")
    ap.add_argument("--holdout", type=int, default=32, help="second eval set's records (default: 32)")
    a = ap.parse_args()
    for name, path in write_reviews(a.out, a.train, a.eval, a.holdout).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
