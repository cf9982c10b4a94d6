"""Tiny randomly initialised causal LMs saved as real checkpoints, for tests.

:func:`make_tiny_checkpoint` writes a directory that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load offline: ``config.json``, ``model.safetensors``,
``generation_config.json``, the tokenizer files and ``chat_template.jinja``. The weights are
random (seeded), so logits are near uniform; use the checkpoints for plumbing, shapes and
ids, not for what a trained model would say.

Session fixtures: ``tiny_qwen_checkpoint`` (Qwen2 architecture, real Qwen2.5 vocabulary,
151,936 embedding rows), ``tiny_bpe_checkpoint`` (Qwen2 architecture, small BPE vocabulary)
and ``tiny_llama3_checkpoint`` (Llama architecture, real Llama-3 vocabulary). Each is a
read-only directory shared by the session; copy it before writing into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from tests.helpers.tokenizers import (
    llama3_tok,
    llama3_tokenizer,
    model_vocab_size,
    qwen25_tok,
    qwen25_tokenizer,
    save_tokenizer,
    small_bpe_tok,
    small_bpe_tokenizer,
)


def _token_id(tokenizer: Any, token: str | None) -> int | None:
    if token is None:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    return None if tid is None or tid == tokenizer.unk_token_id else int(tid)


def make_tiny_checkpoint(
    path: str | Path,
    tokenizer: Any,
    *,
    arch: Literal["qwen2", "llama"] = "qwen2",
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    vocab_size: int | None = None,
) -> Path:
    """Save a tiny random ``Qwen2ForCausalLM`` (or ``LlamaForCausalLM``) with ``tokenizer``.

    Args:
        path: directory to write (created if missing).
        tokenizer: a transformers tokenizer; saved alongside with its chat template.
        arch: ``"qwen2"`` or ``"llama"``.
        seed: torch seed for the random weights (same seed, same weights).
        hidden, layers, heads, kv_heads: model size; ``intermediate_size = 2 * hidden``.
        vocab_size: embedding rows; default :func:`model_vocab_size` (151,936 for Qwen2.5,
            128,256 for Llama-3, else ``len(tokenizer)`` rounded up to 64).

    Returns:
        The checkpoint directory. Weights are float32 safetensors; embeddings are untied
        (as in Qwen2.5-7B and Llama-3-8B).
    """
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = vocab_size if vocab_size is not None else model_vocab_size(tokenizer)
    if n_vocab < len(tokenizer):
        raise ValueError(f"vocab_size {n_vocab} is smaller than the tokenizer ({len(tokenizer)})")
    bos = _token_id(tokenizer, tokenizer.bos_token)
    eos = _token_id(tokenizer, tokenizer.eos_token)
    pad = _token_id(tokenizer, tokenizer.pad_token)
    common: dict[str, Any] = dict(
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        dtype="float32",
    )
    if arch == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif arch == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'qwen2' or 'llama'")
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    # End of turn and end of text both stop generation, as in the real instruct models
    # (Qwen2.5: [151645, 151643]; Llama-3: [128001, 128009]).
    stops = [_token_id(tokenizer, "<|end_of_text|>"), eos, _token_id(tokenizer, "<|endoftext|>")]
    eos_ids = [i for i in dict.fromkeys(stops) if i is not None]
    model.generation_config = GenerationConfig(
        bos_token_id=bos,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=pad,
        do_sample=False,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen_checkpoint(tmp_path_factory: pytest.TempPathFactory, qwen25_tok: Any) -> Path:
    """A tiny Qwen2 checkpoint with the real Qwen2.5 tokenizer (151,936 vocab rows)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen"), qwen25_tok)


@pytest.fixture(scope="session")
def tiny_bpe_checkpoint(tmp_path_factory: pytest.TempPathFactory, small_bpe_tok: Any) -> Path:
    """A tiny Qwen2 checkpoint with the small BPE tokenizer (576 vocab rows)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bpe"), small_bpe_tok)


@pytest.fixture(scope="session")
def tiny_llama3_checkpoint(tmp_path_factory: pytest.TempPathFactory, llama3_tok: Any) -> Path:
    """A tiny Llama checkpoint with the real Llama-3 tokenizer (128,256 vocab rows)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama3"), llama3_tok, arch="llama")


#: Everything ``from tests.helpers.models import *`` brings into ``conftest.py``: the
#: tokenizer and checkpoint fixtures, and the builders.
__all__ = [
    "llama3_tok",
    "llama3_tokenizer",
    "make_tiny_checkpoint",
    "qwen25_tok",
    "qwen25_tokenizer",
    "small_bpe_tok",
    "small_bpe_tokenizer",
    "tiny_bpe_checkpoint",
    "tiny_llama3_checkpoint",
    "tiny_qwen_checkpoint",
]
