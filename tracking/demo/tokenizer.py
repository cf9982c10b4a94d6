"""A small byte-level BPE with ChatML tokens and template, trained on the demo corpus."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Qwen2's split regex: transformers 5 loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer,
# which rebuilds this pre-tokenizer, so the saved one must be the same.
from tokcal.demo.qwen import QWEN2_PATTERN

#: ChatML without a default system prompt; ``<|im_end|>`` closes each turn (and is EOS).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus(records: Iterable[dict[str, Any]]) -> list[str]:
    """Every message text of the records, plus the decisions in both cases, so that each
    label and its lowercase variant (which the decision spec also counts) is one token."""
    texts = [m["content"] for r in records for m in r["messages"]]
    return texts + [f"Decision: \\boxed{{{x}}}" for x in ("Accept", "Reject", "accept", "reject")] * 50


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> Any:
    """Train the BPE on ``texts``; returns a transformers tokenizer with the ChatML template.

    Training splits words with GPT-2's regex, so no token joins ``{`` to ``Accept`` and the
    decision after ``\\boxed{`` is one whole token, as with real Qwen vocabularies.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def save_tokenizer(tokenizer: Any, path: str | Path) -> Path:
    """Save so that ``AutoTokenizer.from_pretrained(path)`` loads it back offline (recorded
    as ``Qwen2Tokenizer``, as real Qwen checkpoints are)."""
    import json

    out = Path(path)
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return out
