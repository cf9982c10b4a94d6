"""The shared test helpers: offline tokenizers, their save/load round trip, tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.tokenizers import (
    QWEN25_ADDED_TOKENS,
    QWEN25_DEFAULT_SYSTEM,
    QWEN25_MODEL_VOCAB_SIZE,
    load_tokenizer,
    model_vocab_size,
    save_tokenizer,
    train_small_bpe_backend,
)

MESSAGES = [
    {"role": "user", "content": "Review: the paper is solid. Decide."},
    {"role": "assistant", "content": "The paper is solid. \\boxed{Accept}"},
]
TEXTS = [
    "The paper is solid. \\boxed{Accept}",
    "café  naïve e\u0301 ﬁ 12345\n\n\tx <|im_end|> it's",
    "<|im_start|>user\nhi<|im_end|>",
]


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def chat_ids(tok: Any, messages: list[dict[str, str]], **kw: Any) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))


def assert_same_tokenizer(a: Any, b: Any) -> None:
    assert len(a) == len(b)
    assert (a.eos_token, a.pad_token, a.bos_token) == (b.eos_token, b.pad_token, b.bos_token)
    for text in TEXTS:
        assert a(text)["input_ids"] == b(text)["input_ids"], text
    for gen in (False, True):
        kw = dict(add_generation_prompt=gen)
        assert a.apply_chat_template(MESSAGES, tokenize=False, **kw) == b.apply_chat_template(
            MESSAGES, tokenize=False, **kw
        )
        assert chat_ids(a, MESSAGES, **kw) == chat_ids(b, MESSAGES, **kw)


# ------------------------------------------------------------------------ tokenizers


def test_qwen_tokenizer_layout(qwen25_tok: Any) -> None:
    tok = qwen25_tok
    assert len(tok) == 151665
    for k, (content, _special) in enumerate(QWEN25_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(content) == 151643 + k
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None
    assert model_vocab_size(tok) == QWEN25_MODEL_VOCAB_SIZE
    # Added tokens are matched whole in text; the tool markers are not "special".
    assert ids(tok, "<|im_start|>x<tool_call>") == [151644, 87, 151657]
    assert tok.decode([151644, 87, 151657], skip_special_tokens=True) == "x<tool_call>"


def test_qwen_chat_template(qwen25_tok: Any) -> None:
    text = qwen25_tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nReview: the paper is solid. Decide.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    own = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    text = qwen25_tok.apply_chat_template(own, tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "Qwen" not in text
    assert text.endswith("\\boxed{Accept}<|im_end|>\n")


def test_small_bpe_layout(small_bpe_tok: Any) -> None:
    tok = small_bpe_tok
    assert 500 <= len(tok) <= 1000
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 0)
    assert model_vocab_size(tok) % 64 == 0 and model_vocab_size(tok) >= len(tok)
    text = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\nReview: the paper is solid. Decide.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_small_bpe_is_deterministic() -> None:
    assert train_small_bpe_backend().to_str() == train_small_bpe_backend().to_str()


def test_llama3_tokenizer_layout(llama3_tok: Any) -> None:
    quicktok = pytest.importorskip("quicktok")
    tok = llama3_tok
    assert len(tok) == 128256 == model_vocab_size(tok)
    assert tok.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"]) == [128000, 128009]
    enc = quicktok.get_encoding("llama3")
    for text in TEXTS:
        assert ids(tok, text) == enc.encode(text), text
    assert tok("hi")["input_ids"][0] == 128000
    text = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Review: the paper is solid. Decide.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat_ids(tok, MESSAGES[:1]).count(128000) == 1


# ----------------------------------------------------------------- save / load round trip


@pytest.mark.parametrize("name", ["small_bpe_tok", "qwen25_tok", "llama3_tok"])
def test_save_load_round_trip(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tok = request.getfixturevalue(name)
    path = save_tokenizer(tok, tmp_path / "tok")
    assert (path / "tokenizer.json").is_file() and (path / "chat_template.jinja").is_file()
    loaded = load_tokenizer(path)
    assert_same_tokenizer(tok, loaded)


def test_chatml_tokenizers_save_as_qwen2(small_bpe_tok: Any, tmp_path: Path) -> None:
    path = save_tokenizer(small_bpe_tok, tmp_path / "tok")
    cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer"
    assert type(load_tokenizer(path)).__name__ == "Qwen2Tokenizer"


# ------------------------------------------------------------------- tiny checkpoints


def _load_and_run(path: Path, tok: Any, expected_vocab: int, arch: str) -> None:
    """Load the model with ``AutoModelForCausalLM`` and run ``tok``'s chat ids through it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == arch
    assert model.dtype == torch.float32
    assert model.config.vocab_size == expected_vocab
    input_ids = torch.tensor([chat_ids(tok, MESSAGES[:1], add_generation_prompt=True)])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, input_ids.shape[1], expected_vocab)
    assert torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id is not None


def test_tiny_bpe_checkpoint(tiny_bpe_checkpoint: Path, small_bpe_tok: Any) -> None:
    files = {p.name for p in tiny_bpe_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert "chat_template.jinja" in files
    loaded = load_tokenizer(tiny_bpe_checkpoint)  # as a qwen2 checkpoint: Qwen2Tokenizer
    assert_same_tokenizer(small_bpe_tok, loaded)
    _load_and_run(tiny_bpe_checkpoint, loaded, model_vocab_size(small_bpe_tok), "Qwen2ForCausalLM")


def test_tiny_qwen_checkpoint(tiny_qwen_checkpoint: Path, qwen25_tok: Any) -> None:
    # The tokenizer files are the round-trip test's; loading 151k tokens again costs seconds.
    _load_and_run(tiny_qwen_checkpoint, qwen25_tok, QWEN25_MODEL_VOCAB_SIZE, "Qwen2ForCausalLM")
    gen = json.loads((tiny_qwen_checkpoint / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643] and gen["pad_token_id"] == 151643
    cfg = json.loads((tiny_qwen_checkpoint / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer"


def test_tiny_llama3_checkpoint(tiny_llama3_checkpoint: Path, llama3_tok: Any) -> None:
    _load_and_run(tiny_llama3_checkpoint, llama3_tok, 128256, "LlamaForCausalLM")


def test_tiny_checkpoint_is_seeded(small_bpe_tok: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(make_tiny_checkpoint(tmp_path / "a", small_bpe_tok, seed=1) / "model.safetensors")
    b = load_file(make_tiny_checkpoint(tmp_path / "b", small_bpe_tok, seed=1) / "model.safetensors")
    c = load_file(make_tiny_checkpoint(tmp_path / "c", small_bpe_tok, seed=2) / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)


def test_tiny_checkpoint_rejects_small_vocab(small_bpe_tok: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        make_tiny_checkpoint(tmp_path / "x", small_bpe_tok, vocab_size=10)
