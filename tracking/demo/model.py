"""Randomly initialised Qwen2 causal LMs: the demo's tiny model, and named shapes with the
real Qwen2.5 vocabulary for benchmarks (a tiny one for CPUs, Qwen2.5-3B's for GPUs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Qwen2 shapes by name. ``tiny`` runs on a laptop CPU (the real 151,936-row vocabulary
#: makes the LM head most of the model); ``3b`` is Qwen2.5-3B's (about 3.1 B parameters).
QWEN2_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": False},
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "tie_word_embeddings": True},
}


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


def build_qwen2(
    shape: str = "tiny",
    *,
    vocab_size: int = 151_936,
    max_positions: int = 8192,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    **overrides: Any,
) -> Any:
    """A random ``Qwen2ForCausalLM`` of a named :data:`QWEN2_SHAPES` shape, in eval mode.

    Args:
        shape: ``"tiny"`` or ``"3b"``.
        vocab_size: embedding rows (151,936 is Qwen2.5's).
        max_positions: longest sequence it takes.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: where the weights are made (``"cuda"`` builds a 3B model without a CPU copy).
        **overrides: any ``Qwen2Config`` field, e.g. ``num_hidden_layers=4``.

    Example:
        >>> m = build_qwen2("tiny", vocab_size=1024)
        >>> m.config.hidden_size, m.lm_head.out_features
        (64, 1024)
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tokcal.errors import TokcalError

    if shape not in QWEN2_SHAPES:
        raise TokcalError(f"expected shape to be one of {sorted(QWEN2_SHAPES)}, got {shape!r}")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise TokcalError(f"expected dtype to be float32, bfloat16 or float16, got {dtype!r}")
    # Qwen2.5's <|endoftext|> (pad) and <|im_end|> (eos), where the vocabulary has them.
    ids = {"pad_token_id": 151643, "eos_token_id": 151645} if vocab_size > 151645 else {}
    config = Qwen2Config(**{**QWEN2_SHAPES[shape], "vocab_size": vocab_size, "max_position_embeddings": max_positions,
                            "bos_token_id": None, **ids, **overrides})
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(torch_dtype).eval()


def save_model(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer to ``path``."""
    from tokcal.demo.tokenizer import save_tokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return out
