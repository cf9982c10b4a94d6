"""A tiny randomly initialised Qwen2 causal LM, saved as a real checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_model(tokenizer: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A ``Qwen2ForCausalLM`` sized for a CPU: vocabulary of ``tokenizer`` rounded up to 64."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, dtype="float32",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(torch.float32)


def save_model(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer to ``path``."""
    from tracking.demo.tokenizer import save_tokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return out
