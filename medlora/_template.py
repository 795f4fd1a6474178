"""Chat templates, in one place: the default (TinyLlama-1.1B-Chat's Zephyr format), the BOS
rule, rendering a template without a tokenizer (a GGUF file's) and writing the served template
into a tokenizer directory. ``medlora.data`` renders through these for training.

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

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
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


def render_template(
    source: str,
    messages: Sequence[Mapping[str, str]],
    *,
    bos_token: str,
    eos_token: str,
    generation_prompt: bool = False,
) -> str:
    """Render a Jinja chat template without a Hugging Face tokenizer (a GGUF file's), in the
    sandbox and with the whitespace settings transformers' ``apply_chat_template`` uses."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(source).render(
        messages=[dict(m) for m in messages],
        add_generation_prompt=generation_prompt,
        eos_token=eos_token,
        bos_token=bos_token,
    )


def write_served_chat_template(directory: Path, tokenizer: Any) -> None:
    """Make ``directory``'s chat template the one training rendered, as servers must render it.

    The template is the directory's own (``chat_template.jinja``, or a string under
    ``chat_template`` in ``tokenizer_config.json``) or, when it has none, the Zephyr default
    that medlora trains with, so vLLM and llama.cpp never fall back to another format. It gains
    ``{{ bos_token }}`` first only when the tokenizer adds BOS on encode and the template's
    rendering does not begin with it (:func:`served_chat_template`): a
    ChatML template whose tokenizer adds no BOS (SmolLM2) is written unchanged. Token ids in
    training are unchanged either way.

    Args:
        directory: A tokenizer directory (its files are read, and the template rewritten).
        tokenizer: The tokenizer loaded from these files.
    """
    from medlora._io import write_json

    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    jinja = directory / "chat_template.jinja"
    inline = config.get("chat_template")
    if inline is not None and not isinstance(inline, str):
        return  # a list of named templates: the user's, left as is
    if isinstance(inline, str) and inline:
        config["chat_template"] = served_chat_template(tokenizer, inline)
        write_json(config_path, config)
        if jinja.is_file():
            jinja.unlink()  # one template, in one place
        return
    source = jinja.read_text(encoding="utf-8") if jinja.is_file() else ZEPHYR_CHAT_TEMPLATE
    served = served_chat_template(tokenizer, source)
    if served != source or not jinja.is_file():
        jinja.write_text(served, encoding="utf-8")
