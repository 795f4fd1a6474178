"""Chat templates: the default (TinyLlama-1.1B-Chat's Zephyr format) and the BOS rule.

Rendered: ``<s><|system|>\\n{sys}</s>\\n<|user|>\\n{msg}</s>\\n<|assistant|>\\n{reply}</s>\\n``.

Servers tokenize a rendered chat *without* adding special tokens: vLLM's chat endpoint and
llama-cpp-python's chat handler both do (llama.cpp's own server strips a leading BOS, then adds
one). So the BOS a model needs must come from the template, and whether a model needs one is
decided by what its tokenizer does, not by the name of ``bos_token``:

* the tokenizer adds BOS on encode (Llama-2/TinyLlama ``<s>``, Llama-3 ``<|begin_of_text|>``):
  the served template must render it first; one that does not gains ``{{ bos_token }}``;
* the tokenizer adds nothing (SmolLM2, whose ``bos_token`` ``<|im_start|>`` is ChatML's turn
  marker): the template is served as it is, and nothing is added or stripped.

:func:`served_chat_template` applies the rule; medlora trains on exactly the ids a server gets
from the served template (``medlora.data.tokenize_messages``).
"""

from __future__ import annotations

from typing import Any

BOS_PREFIX = "{{ bos_token }}"
"""What a served template gains when it must place the BOS itself."""

ZEPHYR_CHAT_TEMPLATE = (
    BOS_PREFIX + "{% for message in messages %}"
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
"""Jinja source of the default template (the format of TinyLlama-1.1B-Chat-v1.0), as served to
a tokenizer that adds BOS; for one that does not, it is served without its first
``{{ bos_token }}``."""

_PROBE = [{"role": "user", "content": "Hi"}]


def chat_template_of(tokenizer: Any) -> str:
    """The tokenizer's own chat template, or TinyLlama's Zephyr template when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else ZEPHYR_CHAT_TEMPLATE


def is_zephyr(template: str) -> bool:
    """Whether ``template`` is medlora's default, with or without its leading BOS."""
    return template.removeprefix(BOS_PREFIX) == ZEPHYR_CHAT_TEMPLATE.removeprefix(BOS_PREFIX)


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` (special tokens added, its default) puts BOS first (probed)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    added = list(tokenizer("Hi", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("Hi", add_special_tokens=False)["input_ids"])
    return added[:1] == [bos] and plain[:1] != [bos]


def renders_bos(tokenizer: Any, template: str) -> bool:
    """Whether ``template``'s rendering of a one-turn chat begins with ``bos_token``'s text.

    A template that cannot render that probe is judged by whether it mentions ``bos_token``.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        return False
    try:
        text = tokenizer.apply_chat_template(
            _PROBE, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template may require roles the probe lacks: judge by its source
        return "bos_token" in template
    return str(text).startswith(bos)


def served_chat_template(tokenizer: Any, template: str | None = None) -> str:
    """``template`` (default: :func:`chat_template_of`) as servers must render it.

    Rendering it and tokenizing with ``add_special_tokens=False`` gives exactly one BOS when the
    tokenizer adds one on encode, and none when it does not. Only a template that the
    tokenizer's BOS must precede, and whose rendering does not begin with it, changes (it gains
    ``{{ bos_token }}`` first); medlora's default loses its BOS for a tokenizer without one.
    Idempotent: serving a served template changes nothing.
    """
    source = chat_template_of(tokenizer) if template is None else template
    if not adds_bos(tokenizer):
        return ZEPHYR_CHAT_TEMPLATE.removeprefix(BOS_PREFIX) if is_zephyr(source) else source
    if is_zephyr(source):
        return ZEPHYR_CHAT_TEMPLATE
    return source if renders_bos(tokenizer, source) else BOS_PREFIX + source


def strip_leading_bos(text: str, bos_token: str | None) -> str:
    """``text`` without one leading ``bos_token``: for a tokenizer that adds it back."""
    if bos_token and text.startswith(bos_token):
        return text[len(bos_token) :]
    return text
