"""Chat template -> token ids with assistant-only labels, one path for training and serving.

The conversation is rendered to text once with the tokenizer's chat template (TinyLlama's
Zephyr format when the tokenizer has none) and tokenized once, with ``<s>`` added by the
tokenizer, exactly as llama.cpp and vLLM will see it at serving time. Labels keep the tokens
whose characters fall inside an assistant reply *or its closing EOS*, so the model learns to
stop; everything else is ``-100``. Padding is masked by position, never by token id (pad is EOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from medlora._template import ZEPHYR_CHAT_TEMPLATE

IGNORE_INDEX = -100
"""Label value that the loss ignores."""


@attrs.frozen(kw_only=True)
class TokenizedExample:
    """One training example: token ids and their labels (``-100`` where no loss is taken)."""

    input_ids: tuple[int, ...]
    """Token ids, starting with BOS."""
    labels: tuple[int, ...]
    """Same length as ``input_ids``; ``-100`` outside the supervised spans."""
    truncated: bool = False
    """Whether the example was cut to ``max_seq_len``."""

    def __len__(self) -> int:
        return len(self.input_ids)


def chat_template_of(tokenizer: Any) -> str:
    """The tokenizer's own chat template, or TinyLlama's Zephyr template when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else ZEPHYR_CHAT_TEMPLATE


def render(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool = False
) -> str:
    """Render messages to the exact text the model is trained and served on."""
    text = tokenizer.apply_chat_template(
        list(messages),
        chat_template=chat_template_of(tokenizer),
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    return str(text)


def _assistant_spans(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], text: str
) -> list[tuple[int, int]]:
    """Character spans of each assistant reply plus its EOS in the rendered ``text``."""
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        start = text.find(message["content"], len(prefix) if text.startswith(prefix) else 0)
        if start < 0:
            raise ValueError("chat template does not reproduce the assistant text verbatim")
        end = start + len(message["content"])
        if eos and text.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
    return spans


def tokenize_messages(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    max_seq_len: int,
    assistant_only: bool = True,
) -> TokenizedExample:
    """Tokenize one conversation and build its labels.

    Args:
        tokenizer: A fast Hugging Face tokenizer (offsets are needed for the label mask).
        messages: Chat turns; ``[assistant-only]`` conversations are raw text (no template).
        max_seq_len: Longer examples are cut from the end and flagged ``truncated``.
        assistant_only: Take loss on assistant replies (and their EOS) only; otherwise on every
            token but the first.
    """
    raw_text = len(messages) == 1 and messages[0]["role"] == "assistant"
    if raw_text:
        text = messages[0]["content"] + (tokenizer.eos_token or "")
        spans = [(0, len(text))]
    else:
        text = render(tokenizer, messages)
        spans = _assistant_spans(tokenizer, messages, text)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = list(enc["offset_mapping"])
    if assistant_only and not raw_text:
        labels = [IGNORE_INDEX] * len(ids)
        for j, (start, end) in enumerate(offsets):
            if end > start and any(s <= start < e for s, e in spans):
                labels[j] = ids[j]
    else:
        labels = list(ids)
        labels[0] = IGNORE_INDEX if ids and ids[0] == tokenizer.bos_token_id else labels[0]
    truncated = len(ids) > max_seq_len
    if truncated:
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    return TokenizedExample(input_ids=tuple(ids), labels=tuple(labels), truncated=truncated)
