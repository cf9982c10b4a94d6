"""``tokcal extract --engine vllm`` on an image eval set, equal to the Hugging Face engine and to
an independent plain transformers forward, teacher-forced and in generate mode.

A tiny random Qwen2.5-VL (head_dim 64, as vLLM's CPU attention needs; windowed attention in
its first vision block) scores page records of one and two images (resized up and down by
``--min-pixels``/``--max-pixels``), an alpaca record with an ``images`` column, a two-turn
record with two decisions, a record with a page after its first answer (each request gets
only the pages before its cut), and text-only records, all in one file. vLLM starts once for the
module: one ``tokcal extract --engine vllm --mode generate`` subprocess (vLLM spawns
processes; ``python -m tokcal`` has the ``__main__`` guard), with ``tests/vllm/shim`` on
``PYTHONPATH`` (vLLM's Qwen2.5-VL code without torchvision; both engines resize with PIL).

``--prefix ''`` makes the decision the first token the model writes, so generate mode
reads P(label) on every answer (a random model never writes ``\\boxed{`` itself): at the
end of the prompt, then greedy text with the images in the cache and mrope positions past
them, compared token for token with a greedy loop of full forwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.processes import run_group

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed; run 'make test-vllm'")

REPO = Path(__file__).resolve().parents[2]
SHIM = Path(__file__).resolve().parent / "shim"
#: Every page is resized: 64x64 (4,096 px) up to at least 4,704, the larger ones down to at
#: most 15,680 (20 tokens); the checkpoint's own bounds differ, so the flags must reach vLLM.
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 6, 28 * 28 * 20
MAX_NEW_TOKENS = 8
#: P(label) of the two engines, and of either against the plain forward (relative).
REL = 1e-3
IMAGE_TOKEN, IM_START, IM_END, ENDOFTEXT = 151655, 151644, 151645, 151643
ENGINE_TIMEOUT_S = 600


# --------------------------------------------------------------------------- the data


def _text_record(rid: str, text: str, answer: str) -> dict[str, Any]:
    return {"id": rid, "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``ckpt``, ``data`` (eval.jsonl) and ``messages``: each record as messages with absolute
    image paths, written here by hand (the reference's input, not tokcal's)."""
    from tests.helpers.tokenizers import qwen25_tokenizer
    from tests.helpers.vision import make_tiny_vl_checkpoint, page_records, write_pages

    root = tmp_path_factory.mktemp("vllm-vl")
    ckpt = make_tiny_vl_checkpoint(root / "ckpt", qwen25_tokenizer(), seed=3, hidden=128, vision_depth=2,
                                   init_std=0.2)
    cfg_file = ckpt / "config.json"
    cfg = json.loads(cfg_file.read_text())
    assert cfg["text_config"]["hidden_size"] // cfg["text_config"]["num_attention_heads"] == 64
    cfg["vision_config"]["fullatt_block_indexes"] = [1]  # block 0 attends within windows
    cfg_file.write_text(json.dumps(cfg, indent=2))

    data = root / "data"
    recs = page_records(4, data, seed=5, pages_per_record=(1, 2))
    messages = {r["id"]: json.loads(json.dumps(r["messages"])) for r in recs}
    for msgs in messages.values():
        for part in msgs[1]["content"]:
            if part["type"] == "image":
                part["image"] = str(data / part["image"])
    extra = write_pages(data / "more", 6, seed=9)
    rel = [str(p.relative_to(data)) for p in extra]

    recs.append(_text_record("text-a", "No pages, only this: solid work.", "Decision: \\boxed{Accept}"))
    recs.append({"id": "alpaca", "instruction": "Page one: <image> and page two: <image> Decide.",
                 "input": "Be strict.", "output": "Decision: \\boxed{Reject}", "images": rel[:2]})
    messages["alpaca"] = [
        {"role": "user", "content": [{"type": "text", "text": "Page one: "}, {"type": "image", "image": str(extra[0])},
                                     {"type": "text", "text": " and page two: "},
                                     {"type": "image", "image": str(extra[1])},
                                     {"type": "text", "text": " Decide.\nBe strict."}]},
        {"role": "assistant", "content": "Decision: \\boxed{Reject}"}]
    two_turns = [
        {"role": "system", "content": "You are a meta-reviewer."},
        {"role": "user", "content": [{"type": "image", "image": rel[2]}, {"type": "image", "image": rel[3]},
                                     {"type": "text", "text": "Two pages. Decide."}]},
        {"role": "assistant", "content": "Decision: \\boxed{Reject}"},
        {"role": "user", "content": "The authors replied. Decide again."},
        {"role": "assistant", "content": "Decision: \\boxed{Accept}"}]
    recs.append({"id": "two-turns", "messages": two_turns})
    messages["two-turns"] = json.loads(json.dumps(two_turns))
    for k in (0, 1):
        messages["two-turns"][1]["content"][k]["image"] = str(extra[2 + k])
    recs.append(_text_record("text-b", "Nothing attached. Weak paper.", "Decision: \\boxed{Reject}"))
    late = [
        {"role": "user", "content": [{"type": "image", "image": rel[4]}, {"type": "text", "text": "First page."}]},
        {"role": "assistant", "content": "Decision: \\boxed{Accept}"},
        {"role": "user", "content": [{"type": "text", "text": "Here is one more page: "},
                                     {"type": "image", "image": rel[5]}]},
        {"role": "assistant", "content": "Decision: \\boxed{Reject}"}]
    recs.append({"id": "late-page", "messages": late})
    messages["late-page"] = json.loads(json.dumps(late))
    messages["late-page"][0]["content"][0]["image"] = str(extra[4])
    messages["late-page"][2]["content"][1]["image"] = str(extra[5])
    for r in recs:
        if "messages" in r and r["id"] not in messages:
            messages[r["id"]] = r["messages"]
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {"ckpt": ckpt, "data": data / "eval.jsonl", "messages": messages, "ids": [r["id"] for r in recs]}


def extract_args(case: dict[str, Any], out: Path, *, mode: str = "generate") -> list[str]:
    return ["extract", "--checkpoint", str(case["ckpt"]), "--data", str(case["data"]), "--output", str(out),
            "--metrics", str(out.with_suffix(".metrics.json")), "--min-pixels", str(MIN_PIXELS),
            "--max-pixels", str(MAX_PIXELS), "--prefix", "", "--mode", mode,
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--quiet"]


def read_rows(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["sample_id"], r.get("turn", 0)): r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def vllm_run(case: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The vLLM engine's rows, from one ``tokcal extract --engine vllm`` subprocess."""
    out = tmp_path_factory.mktemp("vllm-out") / "decisions.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "tokcal", *extract_args(case, out), "--engine", "vllm",
           "--vllm-arg", "enforce_eager=true"]
    t0 = time.perf_counter()
    proc = run_group(cmd, REPO, env, ENGINE_TIMEOUT_S)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    print(f"\nvLLM extract (engine start included): {wall:.1f} s")
    return {"rows": read_rows(out), "metrics": json.loads(out.with_suffix(".metrics.json").read_text()), "wall": wall}


def _hf_extract(case: dict[str, Any], out: Path, **kw: str) -> dict[tuple[str, int], dict[str, Any]]:
    from tokcal.cli.main import main

    assert main(extract_args(case, out, **kw)) == 0
    return read_rows(out)


@pytest.fixture(scope="module")
def hf_rows(case: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """The Hugging Face engine's teacher-forced rows (the default engine, in this process: PIL
    resizing too, since this venv has no torchvision)."""
    return _hf_extract(case, tmp_path_factory.mktemp("hf-out") / "decisions.jsonl", mode="teacher-forced")


@pytest.fixture(scope="module")
def hf_gen_rows(case: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """The Hugging Face engine in generate mode (a page after the first answer is left out of
    that answer's prompt, as vLLM leaves it out)."""
    return _hf_extract(case, tmp_path_factory.mktemp("hf-gen") / "decisions.jsonl")


# ---------------------------------------------------------------------- the reference


class Reference:
    """Plain transformers, written without tokcal: the chat template rendered as text, the
    image processor run on the decoded pages, each ``<|image_pad|>`` repeated grid/4 times,
    one full forward per prompt, softmax."""

    def __init__(self, ckpt: Path) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        # Without torchvision this name is the PIL image processor, as in both engines.
        from transformers.models.qwen2_vl import Qwen2VLImageProcessor

        from tests.helpers.vision import IMAGE_MEAN, IMAGE_STD, QWEN25_VL_CHAT_TEMPLATE

        torch.manual_seed(0)
        self.torch = torch
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(str(ckpt))
        self.template = QWEN25_VL_CHAT_TEMPLATE
        self.images = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, image_mean=IMAGE_MEAN,
                                            image_std=IMAGE_STD)
        self.accept = {self._label_token("\\boxed{Accept}", "Accept"), self._label_token("\\boxed{accept}", "accept")}
        self.reject = {self._label_token("\\boxed{Reject}", "Reject"), self._label_token("\\boxed{reject}", "reject")}

    def _label_token(self, text: str, label: str) -> int:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        c = text.index(label)
        return next(i for i, (s, _) in zip(enc["input_ids"], enc["offset_mapping"]) if s == c)

    def inputs(self, messages: list[dict[str, Any]], blank: bool = False) -> tuple[list[int], dict[str, Any]]:
        """Token ids and the pixel inputs of a record (``blank``: every page mid-grey)."""
        from PIL import Image

        paths = [p["image"] for m in messages if isinstance(m["content"], list)
                 for p in m["content"] if p["type"] == "image"]
        text = self.tok.apply_chat_template(messages, tokenize=False, chat_template=self.template)
        pixels: dict[str, Any] = {}
        if paths:
            pages = [Image.open(p).convert("RGB") for p in paths]
            if blank:
                pages = [Image.new("RGB", im.size, (128, 128, 128)) for im in pages]
            enc = self.images(pages, return_tensors="pt")
            pixels = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
            pieces = text.split("<|image_pad|>")
            assert len(pieces) == len(paths) + 1
            text = pieces[0] + "".join("<|image_pad|>" * int(g.prod() // 4) + rest
                                       for g, rest in zip(enc["image_grid_thw"], pieces[1:]))
        return self.tok(text, add_special_tokens=False)["input_ids"], pixels

    def _logits(self, ids: list[int], pixels: dict[str, Any], keep: int = 0) -> Any:
        torch = self.torch
        t = torch.tensor([ids])
        with torch.no_grad():
            return self.model(input_ids=t, attention_mask=torch.ones_like(t), mm_token_type_ids=(t == IMAGE_TOKEN).long(),
                              logits_to_keep=keep, **pixels).logits[0].double()

    def _label_probs(self, logits: Any) -> tuple[float, float]:
        p = self.torch.softmax(logits, dim=-1)
        return float(p[sorted(self.accept)].sum()), float(p[sorted(self.reject)].sum())

    def decisions(self, messages: list[dict[str, Any]], blank: bool = False) -> list[dict[str, Any]]:
        """Per decision, in order: ``p`` (p_accept, p_reject) at the label token of each
        assistant turn, ``gt``, and ``answer_start`` (the first token of that turn's answer)."""
        ids, pixels = self.inputs(messages, blank)
        logits = self._logits(ids, pixels)
        out = []
        for s in [i + 3 for i in range(len(ids) - 2) if ids[i] == IM_START and self.tok.decode(ids[i + 1:i + 3])
                  == "assistant\n"]:
            end = ids.index(IM_END, s)
            j = next(k for k in range(s, end) if ids[k] in self.accept | self.reject)
            out.append({"p": self._label_probs(logits[j - 1]), "gt": "Accept" if ids[j] in self.accept else "Reject",
                        "answer_start": s, "ids": ids, "pixels": self._pixels_before(pixels, ids[:s].count(IMAGE_TOKEN))})
        return out

    @staticmethod
    def _pixels_before(pixels: dict[str, Any], n_tokens: int) -> dict[str, Any]:
        """The pixel inputs of the images whose ``n_tokens`` tokens a cut prompt holds."""
        if not pixels:
            return pixels
        grids = pixels["image_grid_thw"]
        rows = [int(g.prod()) for g in grids]
        m = next(k for k in range(len(rows) + 1) if sum(rows[:k]) // 4 == n_tokens)
        return {"pixel_values": pixels["pixel_values"][:sum(rows[:m])], "image_grid_thw": grids[:m]} if m else {}

    def greedy(self, ids: list[int], pixels: dict[str, Any]) -> dict[str, Any]:
        """Greedy answer to ``ids``, one full forward per token (no cache): the label
        probabilities at its first position, its text, and the smallest top-1/top-2 logit gap."""
        eos = {IM_END, ENDOFTEXT}
        seq, gen, gap, first = list(ids), [], np.inf, None
        for _ in range(MAX_NEW_TOKENS):
            logits = self._logits(seq, pixels, keep=1)[-1]
            if first is None:
                first = self._label_probs(logits)
            top = self.torch.topk(logits, 2).values
            gap = min(gap, float(top[0] - top[1]))
            nxt = int(logits.argmax())
            gen.append(nxt)
            seq.append(nxt)
            if nxt in eos:
                break
        return {"p": first, "text": self.tok.decode(gen, skip_special_tokens=True), "gap": gap, "n": len(gen),
                "label_first": gen[0] in self.accept | self.reject}


@pytest.fixture(scope="module")
def ref_model(case: dict[str, Any]) -> Reference:
    return Reference(case["ckpt"])


@pytest.fixture(scope="module")
def reference(case: dict[str, Any], ref_model: Reference) -> dict[tuple[str, int], dict[str, Any]]:
    """(record id, turn) -> the reference's decision, with its greedy answer."""
    out = {}
    for rid in case["ids"]:
        for turn, d in enumerate(ref_model.decisions(case["messages"][rid])):
            d["greedy"] = ref_model.greedy(d.pop("ids")[:d["answer_start"]], d.pop("pixels"))
            out[(rid, turn)] = d
    return out


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------------ the tests


def test_teacher_forced_equals_hf_engine_and_full_forward(case, vllm_run, hf_rows, reference):
    rows = vllm_run["rows"]
    expected = set(reference)
    assert set(rows) == set(hf_rows) == expected
    # two images in one record, two decisions in one record, records without images between
    assert {("two-turns", 0), ("two-turns", 1), ("alpaca", 0), ("text-a", 0), ("text-b", 0), ("late-page", 0),
            ("late-page", 1)} <= set(rows)
    worst_abs = worst_rel = 0.0
    for key, ref in reference.items():
        v, h = rows[key], hf_rows[key]
        assert v["gt"] == h["gt"] == ref["gt"], key
        for j, name in enumerate(("p_accept", "p_reject")):
            assert v[name] == pytest.approx(h[name], rel=REL, abs=0), (key, name)
            assert v[name] == pytest.approx(ref["p"][j], rel=REL, abs=0), (key, name)
            assert h[name] == pytest.approx(ref["p"][j], rel=1e-5, abs=0), (key, name)
            worst_abs = max(worst_abs, abs(v[name] - h[name]))
            worst_rel = max(worst_rel, _rel(v[name], h[name]))
    meta = vllm_run["metrics"]["data"]
    assert meta["min_pixels"] == MIN_PIXELS and meta["max_pixels"] == MAX_PIXELS
    assert meta["images"] == 1 + 2 + 1 + 2 + 2 + 2 + 2
    print(f"\nteacher-forced, vLLM vs HF over {len(expected)} decisions: max |dP| {worst_abs:.3g}, "
          f"max relative {worst_rel:.3g}")


def test_images_reach_the_model(case, vllm_run, ref_model):
    """The same records with mid-grey pages score differently (far beyond the tolerance), so the
    agreement above covers what vLLM's vision tower made of the pages."""
    ref = ref_model
    with_images = [rid for rid in case["ids"] if not rid.startswith("text-")]
    for rid in with_images:
        for turn, d in enumerate(ref.decisions(case["messages"][rid], blank=True)):
            got = vllm_run["rows"][(rid, turn)]
            assert max(_rel(got["p_accept"], d["p"][0]), _rel(got["p_reject"], d["p"][1])) > 30 * REL, (rid, turn)


def test_generate_equals_hf_engine_and_greedy_loop(vllm_run, hf_gen_rows, reference):
    """Every answer against the greedy loop and the Hugging Face engine (the page after the first
    answer is not in that answer's prompt)."""
    rows = vllm_run["rows"]
    assert set(hf_gen_rows) == set(reference)
    worst_rel = 0.0
    for key, g in ((k, r["greedy"]) for k, r in reference.items()):
        assert g["gap"] > 1e-3, (key, "a near tie in the reference's greedy choice; pick another seed")
        v = rows[key]
        assert v["gen_written"], key  # the empty prefix: the first token written is the decision
        assert v["gen_text"] == g["text"], key
        assert v["gen_label_written"] == g["label_first"], key
        for j, name in enumerate(("gen_p_accept", "gen_p_reject")):
            assert v[name] == pytest.approx(g["p"][j], rel=REL, abs=0), (key, name)
        h = hf_gen_rows[key]
        assert (h["gen_written"], h["gen_text"], h["gen_label_written"]) == (True, g["text"], g["label_first"]), key
        for j, name in enumerate(("gen_p_accept", "gen_p_reject")):
            assert h[name] == pytest.approx(g["p"][j], rel=1e-5, abs=0), (key, name)
            assert v[name] == pytest.approx(h[name], rel=REL, abs=0), (key, name)
            worst_rel = max(worst_rel, _rel(v[name], h[name]))
    assert any(r["greedy"]["n"] > 1 for r in reference.values())  # several tokens decoded
    assert vllm_run["metrics"]["scalars"]["eval_decision_gen_missing"] == 0
    print(f"\ngenerate over {len(reference)} answers: texts equal to the greedy loop; vLLM vs HF max relative dP "
          f"{worst_rel:.3g}")
