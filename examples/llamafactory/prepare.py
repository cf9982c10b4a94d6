"""Prepare what ``examples/llamafactory/train.yaml`` reads: a tiny random model and a data set
registered in a ``dataset_info.json``. With your own model and data you skip this step and
point the YAML's ``model_name_or_path``, ``dataset_dir``, ``dataset`` and ``eval_dataset`` at
them.

Written under ``--out`` (default ``examples-out/llamafactory``, the YAML's paths):

* ``model/``: a tiny random Qwen2 and a small byte-level BPE tokenizer trained on the data
  (``examples/make_tiny_model.py``; nothing comes from a model hub);
* ``data/reviews_train.json``, ``data/reviews_eval.json``: synthetic reviews as ``messages``
  records (system, user, assistant ``Decision: \\boxed{Accept|Reject}``);
* ``data/dataset_info.json``: both registered in LLaMA-Factory's sharegpt format.

Run from the repository root:

    python examples/llamafactory/prepare.py
    tokcal train examples/llamafactory/train.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/: make_tiny_model, sample_data

#: LLaMA-Factory's sharegpt format with OpenAI-style role/content keys.
SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"}}


def prepare(out: Path, n_train: int = 64, n_eval: int = 16) -> Path:
    """``out/model`` and ``out/data``; returns ``out``."""
    from make_tiny_model import build_text_model
    from sample_data import write_reviews

    data = out / "data"
    paths = write_reviews(data, n_train, n_eval, 0)
    info = {}
    for name in ("train", "eval"):
        records = [json.loads(x) for x in paths[name].read_text(encoding="utf-8").splitlines() if x.strip()]
        (data / f"reviews_{name}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
        info[f"reviews_{name}"] = {"file_name": f"reviews_{name}.json", **SHAREGPT}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    build_text_model(out / "model", [paths["train"]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Run")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("examples-out/llamafactory"),
                    help="folder for model/ and data/ (default: examples-out/llamafactory)")
    ap.add_argument("--train", type=int, default=64, help="training records (default: 64)")
    ap.add_argument("--eval", type=int, default=16, help="eval records (default: 16)")
    a = ap.parse_args()
    out = prepare(a.out, a.train, a.eval)
    print(f"wrote {out / 'model'} and {out / 'data'}; next: tokcal train examples/llamafactory/train.yaml")


if __name__ == "__main__":
    main()
