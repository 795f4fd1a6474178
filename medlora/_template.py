"""The default chat template: TinyLlama-1.1B-Chat's Zephyr-style format.

Rendered: ``<s><|system|>\\n{sys}</s>\\n<|user|>\\n{msg}</s>\\n<|assistant|>\\n{reply}</s>\\n``.

The template starts with ``{{ bos_token }}``, as servers expect: vLLM's chat endpoint and
llama-cpp-python's chat path tokenize the rendered text *without* adding special tokens, and
llama.cpp's own server strips a leading BOS before adding one. medlora itself renders, drops
that leading ``<s>`` (:func:`strip_leading_bos`) and lets the tokenizer add it, so every path
sees exactly one BOS.
"""

from __future__ import annotations

ZEPHYR_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""Jinja source of the default template (the format of TinyLlama-1.1B-Chat-v1.0)."""


def with_leading_bos(template: str) -> str:
    """``template`` as servers need it: unchanged when it places ``bos_token`` itself
    (Llama-2, Mistral and Zephyr-with-BOS templates do), else with ``{{ bos_token }}`` first.

    A template without BOS (TinyLlama-1.1B-Chat's own) trains correctly when the tokenizer adds
    ``<s>``, but is served without one by vLLM's chat endpoint and llama-cpp-python, which
    tokenize the rendered prompt with no special tokens added.
    """
    return template if "bos_token" in template else "{{ bos_token }}" + template


def strip_leading_bos(text: str, bos_token: str | None) -> str:
    """``text`` without one leading ``bos_token``: the tokenizer adds it back."""
    if bos_token and text.startswith(bos_token):
        return text[len(bos_token) :]
    return text
