"""The default chat template: TinyLlama-1.1B-Chat's Zephyr-style format.

Rendered: ``<|system|>\\n{sys}</s>\\n<|user|>\\n{msg}</s>\\n<|assistant|>\\n{reply}</s>\\n``.
It holds no ``{{ bos_token }}``: the tokenizer adds ``<s>`` once when the text is tokenized,
the same way in training, evaluation, llama.cpp and vLLM.
"""

from __future__ import annotations

ZEPHYR_CHAT_TEMPLATE = (
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
