"""Throughput and peak memory of ``tokcal extract`` on an image eval set, against a naive
full-logits forward of the same batches.

A tiny random Qwen2.5-VL (2 text layers, hidden 64, a 1-block vision tower, the real
151,936-row vocabulary so the logits weigh what they weigh in the real model), a small BPE
with Qwen's vision tokens, and generated PNG pages (2 per record, 448x640 and 640x448,
``max_pixels`` 28*28*256, so 256 image tokens per page). Each variant runs in a fresh
process and reports wall time and the growth of its peak resident set over the loaded model
(CPU) or torch's peak allocation (CUDA). ``tokcal`` is ``score_checkpoint`` with an
:class:`~tokcal.data.sources.ImageDataFile` (pages decoded per batch, logits at the answer
positions only); ``naive`` scores the very batches tokcal builds with ``model(**batch).logits``
and a softmax at the answer positions, holding the batches in memory as a list.

    python benchmarks/bench_vl_extract.py [--records 32] [--max-tokens 4096] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = 151_936
VISION = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if "
    "message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_PIXELS = 28 * 28 * 256


def build(root: Path, n_records: int) -> tuple[Path, Path]:
    """The checkpoint and ``eval.jsonl`` (with its pages) under ``root``."""
    import torch
    from PIL import Image, ImageDraw
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from tokcal.data.synthetic import review_records
    from tokcal.demo.tokenizer import corpus, save_tokenizer, train_tokenizer

    recs = review_records(n_records, seed=7)
    tok = train_tokenizer(corpus(recs))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *VISION]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}, tie_word_embeddings=False),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(0)
    ckpt = root / "ckpt"
    Qwen2_5_VLForConditionalGeneration(cfg).eval().save_pretrained(str(ckpt))
    save_tokenizer(tok, ckpt)
    (ckpt / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (ckpt / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}))
    data = root / "data"
    (data / "pages").mkdir(parents=True)
    lines = []
    for i, r in enumerate(recs):
        parts = []
        for k, size in enumerate([(448, 640), (640, 448)]):
            im = Image.new("RGB", size, (250, 250, 245))
            draw = ImageDraw.Draw(im)
            for y in range(20, size[1] - 20, 12):
                draw.line([20, y, size[0] - 20 - (y * 7 + i) % 200, y], fill=(20, 20, 20), width=3)
            name = f"pages/r{i}_p{k}.png"
            im.save(data / name)
            parts.append({"type": "image", "image": name})
        system, user, answer = (m["content"] for m in r["messages"])
        lines.append({"id": r["id"], "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": [*parts, {"type": "text", "text": user}]},
                                                  {"role": "assistant", "content": answer}]})
    (data / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return ckpt, data / "eval.jsonl"


def peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(variant: str, ckpt: str, data: str, max_tokens: int, device: str) -> dict:
    import warnings

    import torch

    from tokcal.core.positions import find_answer_positions
    from tokcal.core.spec import DecisionSpec
    from tokcal.data.batches import LazyBatches
    from tokcal.data.sources import ImageDataFile
    from tokcal.jobs.checkpoints import load_checkpoint
    from tokcal.jobs.extract import score_examples

    warnings.simplefilter("ignore")
    model, processor = load_checkpoint(ckpt, device=device, processor_options={})
    source = ImageDataFile(data)
    source.check()
    examples = source.examples(processor)
    spec = DecisionSpec()
    resolved = spec.resolve(processor.tokenizer)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes(device) if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if variant == "tokcal":
        scores = score_examples(model, processor, examples, spec, source=source, max_tokens=max_tokens,
                                progress=False)
        n = len(scores)
    else:  # the same batches held as a list, then a plain full forward and softmax
        lazy = source.batches(examples, processor, max_tokens=max_tokens, model=model)
        assert isinstance(lazy, LazyBatches)
        batches = list(lazy)
        n = 0
        with torch.inference_mode():
            for b in batches:
                inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()
                          if k not in ("labels", "sample_index")}
                logits = model(**inputs).logits
                probs = torch.softmax(logits.float(), dim=-1)
                pos = find_answer_positions(b["labels"], resolved, b["input_ids"])
                n += int(probs[torch.as_tensor(pos.rows), torch.as_tensor(pos.cols - 1)].shape[0])
    wall = time.perf_counter() - t0
    image_tokens = sum(int((torch.tensor(e.input_ids) == processor.image_token_id).sum()) for e in examples)
    return {"variant": variant, "seconds": wall, "decisions": n, "samples": len(examples),
            "tokens": sum(len(e) for e in examples), "image_tokens": image_tokens,
            "peak_mib": (peak_bytes(device) - base) / 2**20}


def run_child(variant: str, ckpt: Path, data: Path, a: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--ckpt", str(ckpt), "--data", str(data),
                          "--max-tokens", str(a.max_tokens), "--device", a.device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/bench_vl_extract.py --records 16 --workdir .bench/vl",
    )
    ap.add_argument("--records", type=int, default=32, help="records in the first run (the second has twice as many)")
    ap.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--workdir", help="keep the generated checkpoint and pages here (default: a temporary folder)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.ckpt, a.data, a.max_tokens, a.device)))
        return
    with (contextlib.nullcontext(a.workdir) if a.workdir else tempfile.TemporaryDirectory()) as tmp:
        rows = []
        for n in (a.records, 2 * a.records):  # memory should not grow with the eval set
            root = Path(tmp) / f"n{n}"
            ckpt, data = build(root, n)
            for variant in ("tokcal", "naive"):
                rows.append((n, run_child(variant, ckpt, data, a)))
    print(f"tiny Qwen2.5-VL, vocab {VOCAB}, 2 pages/record ({MAX_PIXELS} max pixels), "
          f"--max-tokens {a.max_tokens}, {a.device}")
    print(f"{'records':>7} {'variant':<8} {'samples/s':>10} {'tokens/s':>10} {'img tok':>8} {'peak MiB':>9}")
    by = {}
    for n, r in rows:
        by[(n, r["variant"])] = r
        print(f"{n:>7} {r['variant']:<8} {r['samples'] / r['seconds']:>10.2f} {r['tokens'] / r['seconds']:>10.0f} "
              f"{r['image_tokens']:>8} {r['peak_mib']:>9.1f}")
    for n in (a.records, 2 * a.records):
        t, v = by[(n, "tokcal")], by[(n, "naive")]
        print(f"{n} records: peak naive/tokcal {v['peak_mib'] / max(t['peak_mib'], 1e-9):.1f}x, "
              f"time naive/tokcal {v['seconds'] / t['seconds']:.2f}x")


if __name__ == "__main__":
    main()
