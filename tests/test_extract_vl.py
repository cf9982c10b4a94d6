"""`tokcal extract` on image data sets with a tiny random Qwen2.5-VL (real Qwen2.5 vocabulary,
real processor files), checked against an independent plain full forward: the image
processor, the placeholder expansion and ``mm_token_type_ids`` rebuilt here by hand, then
softmax at the answer position. Plus the bad-input errors, lazy decoding and the
torchvision-less processor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tokenizers import qwen25_tokenizer
from tests.helpers.oracle import label_token_sets
from tests.helpers.vision import (
    MAX_PIXELS,
    MIN_PIXELS,
    QWEN25_VL_CHAT_TEMPLATE,
    make_tiny_vl_checkpoint,
    page_records,
    write_pages,
)
from tokcal.cli.main import main

pytestmark = pytest.mark.slow  # scores a (tiny) vision-language model

IMAGE_TOKEN = 151655


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def vl_ckpt(tmp_path_factory) -> Path:
    return make_tiny_vl_checkpoint(tmp_path_factory.mktemp("vl") / "ckpt", qwen25_tokenizer(), seed=3, init_std=0.2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """eval.jsonl with messages records (1-3 pages each, five page sizes), an alpaca and a
    sharegpt record with an ``images`` column and <image> placeholders, and a text-only
    record; every image path relative to the data file's folder."""
    d = tmp_path_factory.mktemp("pages")
    recs = page_records(6, d, seed=5)
    extra = write_pages(d / "more", 3, seed=9)
    recs.append({"id": "alpaca", "instruction": "<image>Decide on this page.", "input": "Be strict.",
                 "output": "\\boxed{Reject}", "images": [str(extra[0].relative_to(d))]})
    recs.append({"id": "sharegpt", "images": [str(extra[1].relative_to(d)), str(extra[2].relative_to(d))],
                 "conversations": [{"from": "human", "value": "Pages: <image>\n<image>\nDecide."},
                                   {"from": "gpt", "value": "\\boxed{accept}"}]})
    recs.append({"id": "text", "messages": [{"role": "user", "content": "No pages, only this: solid work."},
                                            {"role": "assistant", "content": "\\boxed{Accept}"}]})
    write_jsonl(d / "eval.jsonl", recs)
    return d


# ------------------------------------------------------------------ the reference


def reference_inputs(tok, record: dict, base: Path, min_pixels: int, max_pixels: int) -> dict:
    """Model inputs for one record, by hand: Qwen2-VL image processor (PIL backend) on the
    decoded pages, the chat template rendered with <|image_pad|> repeated grid/4 times, and
    mm_token_type_ids = 1 on image tokens."""
    from PIL import Image
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    msgs, paths = [], []
    if "messages" in record:
        for m in record["messages"]:
            if isinstance(m["content"], list):
                paths += [p["image"] for p in m["content"] if p["type"] == "image"]
            msgs.append(m)
    else:  # images column: split the text at <image>
        if "instruction" in record:
            turns = [("user", f"{record['instruction']}\n{record['input']}"), ("assistant", record["output"])]
        else:
            turns = [({"human": "user", "gpt": "assistant"}[c["from"]], c["value"]) for c in record["conversations"]]
        it = iter(record["images"])
        for role, text in turns:
            if "<image>" not in text:
                msgs.append({"role": role, "content": text})
                continue
            parts = []
            for k, piece in enumerate(text.split("<image>")):
                if k:
                    paths.append(next(it))
                    parts.append({"type": "image", "image": paths[-1]})
                if piece:
                    parts.append({"type": "text", "text": piece})
            msgs.append({"role": role, "content": parts})
    text = tok.apply_chat_template(msgs, tokenize=False, chat_template=QWEN25_VL_CHAT_TEMPLATE)
    out: dict = {}
    if paths:
        ip = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
        images = [Image.open(base / p).convert("RGB") for p in paths]
        pix = ip(images, return_tensors="pt")
        out["pixel_values"], out["image_grid_thw"] = pix["pixel_values"], pix["image_grid_thw"]
        pieces = text.split("<|image_pad|>")
        assert len(pieces) == len(paths) + 1
        text = pieces[0] + "".join("<|image_pad|>" * int(g.prod() // 4) + rest
                                   for g, rest in zip(pix["image_grid_thw"], pieces[1:]))
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out.update(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == IMAGE_TOKEN).long())
    return out


def decision_ids(tok) -> tuple[set[int], set[int]]:
    return label_token_sets(tok)


def reference_probs(ckpt: Path, records: list[dict], base: Path, *, min_pixels: int = MIN_PIXELS,
                    max_pixels: int = MAX_PIXELS) -> dict[str, tuple[float, float]]:
    """sample id -> (p_accept, p_reject): one full forward per record alone, softmax at
    the position before its last decision token."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(ckpt)).eval()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    accept, reject = decision_ids(tok)
    out = {}
    for r in records:
        inputs = reference_inputs(tok, r, base, min_pixels, max_pixels)
        ids = inputs["input_ids"][0].tolist()
        j = max(i for i, t in enumerate(ids) if t in accept | reject)
        with torch.no_grad():
            p = torch.softmax(model(**inputs).logits[0, j - 1].double(), dim=-1)
        out[r["id"]] = (float(p[list(accept)].sum()), float(p[list(reject)].sum()))
    return out


def read_rows(path: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in map(json.loads, path.read_text().splitlines())}


# ------------------------------------------------------------------------ the tests


def test_extract_equals_full_forward_with_all_processor_outputs(vl_ckpt, data, tmp_path, capsys):
    recs = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    lo, hi = 28 * 28 * 6, 28 * 28 * 40  # not the checkpoint's own bounds: the flags must reach the processor
    out, met = tmp_path / "dec.jsonl", tmp_path / "metrics.json"
    rc = main(["extract", "--checkpoint", str(vl_ckpt), "--data", str(data / "eval.jsonl"), "--output", str(out),
               "--metrics", str(met), "--max-tokens", "400", "--min-pixels", str(lo), "--max-pixels", str(hi)])
    assert rc == 0
    rows = read_rows(out)
    ref = reference_probs(vl_ckpt, recs, data, min_pixels=lo, max_pixels=hi)
    assert set(rows) == set(ref) == {r["id"] for r in recs}
    for sid, (pa, pr) in ref.items():
        assert rows[sid]["p_accept"] == pytest.approx(pa, abs=1e-5, rel=1e-5), sid
        assert rows[sid]["p_reject"] == pytest.approx(pr, abs=1e-5, rel=1e-5), sid
    assert rows["sharegpt"]["gt"] == "Accept" and rows["alpaca"]["gt"] == "Reject"
    meta = json.loads(met.read_text())
    assert meta["data"]["min_pixels"] == lo and meta["data"]["max_pixels"] == hi
    assert meta["data"]["images"] == sum(len(r.get("images", [])) for r in recs) + 10  # 1,2,1,3,1,2 pages
    assert meta["scalars"]["eval_decision_samples"] == len(recs)


def test_left_padding_and_mixed_sizes_in_one_batch(vl_ckpt, data):
    """Batches mix pages of several sizes within the token budget; left and right padding
    both equal the reference."""
    from tokcal.core.spec import DecisionSpec
    from tokcal.data.sources import ImageDataFile
    from tokcal.jobs.checkpoints import load_checkpoint
    from tokcal.jobs.extract import score_checkpoint

    recs = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    ref = reference_probs(vl_ckpt, recs, data)
    budget = 600
    for side in ("left", "right"):
        source = ImageDataFile(data / "eval.jsonl", padding_side=side)
        scores = score_checkpoint(vl_ckpt, source, DecisionSpec(), max_tokens=budget, progress=False)
        got = {r["sample_id"]: r for r in scores.records()}
        for sid, (pa, pr) in ref.items():
            assert got[sid]["p_accept"] == pytest.approx(pa, abs=1e-5, rel=1e-5), (side, sid)
            assert got[sid]["p_reject"] == pytest.approx(pr, abs=1e-5, rel=1e-5), (side, sid)
    _, processor = load_checkpoint(vl_ckpt, processor_options={})
    examples = source.examples(processor)
    batches = source.batches(examples, processor, max_tokens=budget)
    sizes_mixed = False
    for b in batches:
        rows, t = b["input_ids"].shape
        assert rows == 1 or rows * t <= budget  # the budget counts the image tokens
        assert b["input_ids"].shape == b["mm_token_type_ids"].shape == b["labels"].shape
        assert int((b["input_ids"] == IMAGE_TOKEN).sum()) == int(b["image_grid_thw"].prod(-1).sum() // 4)
        sizes_mixed |= len({tuple(g.tolist()) for g in b.get("image_grid_thw", torch.empty(0, 3))}) > 1
    assert sizes_mixed and len(batches) > 1


def test_images_are_decoded_per_batch(vl_ckpt, data, monkeypatch):
    """Checking and tokenising read headers only; each batch decodes its own pages when built."""
    import PIL.Image

    from tokcal.data.sources import ImageDataFile
    from tokcal.jobs.checkpoints import load_checkpoint

    _, processor = load_checkpoint(vl_ckpt, processor_options={})
    decoded: list[str] = []
    real_load = PIL.Image.Image.load

    def load(self):  # count pixel decodes (header reads never call load)
        if getattr(self, "filename", ""):
            decoded.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(PIL.Image.Image, "load", load)
    source = ImageDataFile(data / "eval.jsonl")
    source.check()
    examples = source.examples(processor)
    batches = source.batches(examples, processor, max_tokens=400)
    assert decoded == []
    first = batches[0]
    n_first = len(decoded)
    wanted = {str(p) for i in first["sample_index"] for p in source.conversations[examples[i].extra["record"]].images}
    assert set(decoded) == wanted  # this batch's pages, no others
    assert first["pixel_values"].shape[0] == int(first["image_grid_thw"].prod(-1).sum())
    assert isinstance(batches[1::2], type(batches)) and len(decoded) == n_first  # slicing builds nothing


def test_image_dir_resolves_relative_paths(data, tmp_path):
    from tokcal.data.sources import ImageDataFile, open_data_file

    recs = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    elsewhere = write_jsonl(tmp_path / "eval.jsonl", recs)
    source = open_data_file(elsewhere, image_dir=data)
    assert isinstance(source, ImageDataFile)
    source.check()
    paths = [p for c in source.conversations for p in c.images]
    assert paths and all(p.is_file() and p.is_relative_to(data.resolve()) for p in paths)


# ------------------------------------------------------------------------- bad input


def run_err(args: list[str], capsys) -> str:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("tokcal extract: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_images_are_one_line_errors_before_scoring(vl_ckpt, data, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    recs = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    base = ["extract", "--checkpoint", str(vl_ckpt), "--output", str(out), "--metrics", str(tmp_path / "m.json")]

    def with_record(name: str, rec: dict) -> list[str]:
        return base + ["--data", str(write_jsonl(data / f"{name}.jsonl", [recs[0], rec]))]

    missing = {"id": "gone", "instruction": "<image>Decide.", "output": "\\boxed{Accept}", "images": ["nope/p.png"]}
    msg = run_err(with_record("missing", missing), capsys)
    assert "record 1 (id 'gone')" in msg and "image not found" in msg and str(data / "nope" / "p.png") in msg

    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    broken = {**missing, "id": "broken", "images": ["broken.png"]}
    msg = run_err(with_record("broken", broken), capsys)
    assert "cannot read image" in msg and str(data / "broken.png") in msg and "record 1" in msg

    (data / "text.png").write_text("plain text, not an image")
    msg = run_err(with_record("text", {**missing, "id": "txt", "images": ["text.png"]}), capsys)
    assert "cannot read image" in msg and "text.png" in msg

    page = recs[6]["images"][0]
    more = {**missing, "id": "more", "instruction": "<image><image>Decide.", "images": [page]}
    msg = run_err(with_record("more", more), capsys)
    assert "record 1 (id 'more')" in msg and "2 <image> placeholders for 1 images" in msg
    fewer = {**missing, "id": "fewer", "instruction": "Decide.", "images": [page, page]}
    assert "0 <image> placeholders for 2 images" in run_err(with_record("fewer", fewer), capsys)

    url = {"id": "url", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "https://example.org/p.png"}]},
        {"role": "assistant", "content": "\\boxed{Accept}"}]}
    assert "is a URL" in run_err(with_record("url", url), capsys)

    text_only = write_jsonl(tmp_path / "plain.jsonl", [recs[-1]])
    assert "has no images" in run_err(base + ["--data", str(text_only), "--max-pixels", "1000"], capsys)
    assert "min_pixels <= max_pixels" in run_err(
        base + ["--data", str(data / "eval.jsonl"), "--min-pixels", "9000", "--max-pixels", "1000"], capsys)
    assert not out.exists() and not (tmp_path / "m.json").exists()


def _have_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def test_processor_without_torchvision_warns_once(vl_ckpt, monkeypatch):
    import warnings

    from tokcal.jobs import checkpoints

    monkeypatch.setattr(checkpoints, "_warned_no_video", False)
    monkeypatch.setattr(checkpoints, "_KEEP_LOADED", 0)  # load twice: the warning, not the cache, is once
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        procs = [checkpoints.load_processor(vl_ckpt, max_pixels=28 * 28 * 10) for _ in range(2)]
    notes = [w for w in seen if "torchvision" in str(w.message)]
    if _have_torchvision():
        assert not notes and all(getattr(p, "video_processor", None) is not None for p in procs)
    else:
        assert len(notes) == 1 and not hasattr(procs[0], "video_processor")
    p = procs[0]
    assert type(p).__name__ == "Qwen2_5_VLProcessor"
    assert p.image_processor.size["longest_edge"] == 28 * 28 * 10
    assert p.tokenizer.convert_tokens_to_ids("<|image_pad|>") == IMAGE_TOKEN
    enc = p(text=["<|vision_start|><|image_pad|><|vision_end|>x"],
            images=[np.full((56, 84, 3), 128, dtype=np.uint8)], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert int((enc["input_ids"] == IMAGE_TOKEN).sum()) == 6 and "mm_token_type_ids" in enc
