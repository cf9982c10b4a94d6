"""A tiny random Qwen2.5-VL checkpoint with its processor, page images and image records.

:func:`make_tiny_vl_checkpoint` writes what a real Qwen2.5-VL-Instruct checkpoint holds:
``config.json`` (``Qwen2_5_VLForConditionalGeneration``), ``model.safetensors``, the real
Qwen2.5 tokenizer (:func:`tests.helpers.tokenizers.qwen25_tokenizer`, 151,936 embedding
rows) with the Qwen2.5-VL chat template, and ``preprocessor_config.json`` in the real
file's layout (``Qwen2VLImageProcessor``, ``processor_class: Qwen2_5_VLProcessor``) with a
small ``max_pixels`` so pages make a few dozen tokens. The weights are random (seeded).

:func:`write_pages` draws PNG pages of several sizes; :func:`page_records` makes
``messages`` records whose user turn holds page images and text, and :class:`VLCollator`
is a Trainer collator that keeps every processor output (``pixel_values``,
``image_grid_thw``, ``mm_token_type_ids``) and labels the answer independently of tokcal.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

from tests.helpers.tokenizers import save_tokenizer
from tokcal.data.synthetic import review_records
from tokcal.demo.qwen import QWEN25_VL_CHAT_TEMPLATE

IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
#: 28 x 28 pixels make one image token after the 2 x 2 merge; pages get 4 to 48 tokens.
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 48


def make_tiny_vl_checkpoint(
    path: str | Path,
    tokenizer: Any,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vision_depth: int = 1,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    init_std: float = 0.02,
) -> Path:
    """Save a tiny random ``Qwen2_5_VLForConditionalGeneration`` with its processor files.

    Args:
        path: directory to write (created if missing).
        tokenizer: the Qwen2.5 tokenizer (its vision tokens 151652..151656 are used).
        seed: torch seed for the random weights.
        hidden, layers: text model size (2 heads, 1 KV head); ``vision_depth``: vision blocks.
        min_pixels, max_pixels: the image processor's resize bounds.
        init_std: weight init scale (larger: less uniform logits, so image inputs matter more).
    """
    from tokcal.demo.model import build_qwen25_vl

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model = build_qwen25_vl(hidden=hidden, layers=layers, vision_depth=vision_depth, seed=seed, init_std=init_std)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    (out / "chat_template.jinja").write_text(QWEN25_VL_CHAT_TEMPLATE, encoding="utf-8")
    (out / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": min_pixels, "max_pixels": max_pixels, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }, indent=2) + "\n", encoding="utf-8")
    return out


#: Page sizes (width, height) in pixels: portrait, landscape, small, tall.
PAGE_SIZES = [(112, 160), (200, 120), (64, 64), (90, 250), (150, 150)]


def write_pages(folder: str | Path, n: int, *, seed: int = 0, accept: Sequence[bool] | None = None,
                sizes: Sequence[tuple[int, int]] = PAGE_SIZES) -> list[Path]:
    """``n`` PNG pages of cycling sizes with drawn lines of text; an accepted page has a
    green header band, a rejected one a red band (something for the vision tower to see)."""
    from PIL import Image, ImageDraw

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        im = Image.new("RGB", (w, h), (250, 250, 245))
        draw = ImageDraw.Draw(im)
        good = accept[i] if accept is not None else rng.random() < 0.5
        draw.rectangle([0, 0, w, max(6, h // 8)], fill=(40, 160, 60) if good else (190, 40, 40))
        for y in range(h // 8 + 4, h - 6, 9):
            draw.line([4, y, rng.randint(w // 3, w - 4), y], fill=(30, 30, 30), width=2)
        p = d / f"page_{seed}_{i:03d}.png"
        im.save(p)
        out.append(p)
    return out


def page_records(n: int, folder: str | Path, *, seed: int = 0, pages_per_record: Sequence[int] = (1, 2, 1, 3),
                 relative: bool = True) -> list[dict[str, Any]]:
    """``n`` ``messages`` records: a system prompt, a user turn with page images then the
    review text, and the assistant's ``Decision: \\boxed{Accept|Reject}``. Paths are
    relative to ``folder`` (where the pages are written) unless ``relative=False``."""
    folder = Path(folder)
    reviews = review_records(n, seed=seed)
    counts = [pages_per_record[i % len(pages_per_record)] for i in range(n)]
    accept = []
    for r, k in zip(reviews, counts):
        accept += ["Accept" in r["messages"][-1]["content"]] * k
    pages = write_pages(folder / "pages", sum(counts), seed=seed, accept=accept)
    out, at = [], 0
    for r, k in zip(reviews, counts):
        system, user, answer = (m["content"] for m in r["messages"])
        parts = [{"type": "image", "image": str(p.relative_to(folder) if relative else p)}
                 for p in pages[at:at + k]]
        at += k
        out.append({"id": r["id"], "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [*parts, {"type": "text", "text": user}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]})
    return out


def absolute(records: Sequence[dict[str, Any]], folder: str | Path) -> list[dict[str, Any]]:
    """Copies of ``records`` with image paths made absolute against ``folder``."""
    out = json.loads(json.dumps(list(records)))
    for r in out:
        for m in r["messages"]:
            if isinstance(m["content"], list):
                for p in m["content"]:
                    if p["type"] == "image":
                        p["image"] = str(Path(folder) / p["image"])
    return out


def answer_labels(input_ids: Sequence[int], im_start: int = 151644, im_end: int = 151645) -> list[int]:
    """Labels as an SFT collator makes them, written independently of tokcal: the tokens of
    the last turn after ``<|im_start|>assistant\\n`` up to and including ``<|im_end|>``."""
    ids = list(input_ids)
    start = len(ids) - 1 - ids[::-1].index(im_start) + 3  # <|im_start|> "assistant" "\n"
    end = ids.index(im_end, start) + 1
    return [-100] * start + ids[start:end] + [-100] * (len(ids) - end)


class VLCollator:
    """Trainer collator for :func:`page_records` rows (``remove_unused_columns=False``):
    each record through ``processor.apply_chat_template(tokenize=True)``, right-padded,
    every processor output kept, labels from :func:`answer_labels`."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        encs = [self.processor.apply_chat_template(f["messages"], tokenize=True, return_dict=True,
                                                   return_tensors="pt") for f in features]
        t = max(e["input_ids"].shape[1] for e in encs)
        pad = self.processor.tokenizer.pad_token_id
        batch: dict[str, Any] = {}
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            fill = pad if key == "input_ids" else 0
            batch[key] = torch.stack([torch.nn.functional.pad(e[key][0], (0, t - e[key].shape[1]), value=fill)
                                      for e in encs])
        batch["labels"] = torch.stack([torch.nn.functional.pad(torch.tensor(answer_labels(e["input_ids"][0].tolist())),
                                                               (0, t - e["input_ids"].shape[1]), value=-100)
                                       for e in encs])
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in encs])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in encs])
        return batch
