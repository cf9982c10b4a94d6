"""Randomly initialised Qwen2 causal LMs: the demo's tiny model, and named shapes with the
real Qwen2.5 vocabulary for benchmarks (a tiny one for CPUs, Qwen2.5-3B's for GPUs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Qwen2 shapes by name. ``tiny`` runs on a laptop CPU (the real 151,936-row vocabulary
#: makes the LM head most of the model); ``tiny-h64`` is as small, with two attention heads of
#: 64 (vLLM's CPU attention takes no smaller head); ``3b`` is Qwen2.5-3B's (about 3.1 B parameters).
QWEN2_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": False},
    "tiny-h64": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "tie_word_embeddings": False},
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
        shape: ``"tiny"``, ``"tiny-h64"`` or ``"3b"``.
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


def build_qwen25_vl(*, hidden: int = 64, layers: int = 2, vision_depth: int = 1, seed: int = 0,
                    init_std: float = 0.2) -> Any:
    """A random ``Qwen2_5_VLForConditionalGeneration`` sized for a CPU, with the real Qwen2.5
    vocabulary and vision tokens (151652..151656), in eval mode.

    Args:
        hidden, layers: text model size (2 heads, 1 KV head); vision_depth: vision blocks.
        init_std: weight init scale (larger: less uniform logits, so image inputs matter more).
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = hidden // 2
    quarter = head_dim // 2 // 4
    mrope = [head_dim // 2 - 3 * quarter, quarter + quarter // 2, quarter + quarter - quarter // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         rope_scaling={"type": "mrope", "mrope_section": mrope}),
        vision_config=dict(depth=vision_depth, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=list(range(vision_depth))),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=False,
        initializer_range=init_std,
    )
    config.text_config.initializer_range = init_std  # larger weights: the images change the output
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643],
                                               pad_token_id=151643, do_sample=False)
    return model
