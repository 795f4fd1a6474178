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

from medlora._template import ZEPHYR_CHAT_TEMPLATE, strip_leading_bos

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
    """Render messages to the exact text the model is trained and served on, without the
    template's leading BOS: tokenizing it (special tokens added) puts ``<s>`` back once."""
    text = tokenizer.apply_chat_template(
        list(messages),
        chat_template=chat_template_of(tokenizer),
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    return strip_leading_bos(str(text), tokenizer.bos_token)


def _render_zephyr(messages: Sequence[Mapping[str, str]], eos: str) -> str:
    """Pure-Python rendering of the default template: the same text, without Jinja's cost."""
    parts = []
    for message in messages:
        role = message["role"]
        if role in ("system", "user", "assistant"):
            parts.append(f"<|{role}|>\n{message['content']}{eos}\n")
    return "".join(parts)


def render_fast(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """:func:`render` without a generation prompt; skips Jinja for the default template."""
    if chat_template_of(tokenizer) == ZEPHYR_CHAT_TEMPLATE:
        return _render_zephyr(messages, tokenizer.eos_token or "")
    return render(tokenizer, messages)


def _assistant_spans(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], text: str
) -> list[tuple[int, int]]:
    """Character spans of each assistant reply plus its EOS in the rendered ``text``.

    Every message's content is found in order after the previous one (the template reproduces
    it verbatim, or trimmed), so no prefix has to be rendered again per turn.
    """
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for message in messages:
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0:
            content = content.strip()
            start = text.find(content, cursor)
        if start < 0:
            raise ValueError("chat template does not reproduce the message text verbatim")
        end = start + len(content)
        cursor = end
        if message["role"] != "assistant":
            continue
        if eos and text.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
    return spans


def _labels(
    ids: list[int], offsets: Any, spans: list[tuple[int, int]], *, bos_id: int | None
) -> list[int]:
    """Token ids where a token starts inside a span, ``-100`` elsewhere (no spans: all but BOS)."""
    import numpy as np

    ids_a = np.asarray(ids, dtype=np.int64)
    if not spans:
        labels = ids_a.copy()
        if len(ids) and ids[0] == bos_id:
            labels[0] = IGNORE_INDEX
        return labels.tolist()  # type: ignore[no-any-return]
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = offs[:, 0], offs[:, 1]
    keep = np.zeros(len(ids), dtype=bool)
    for s, e in spans:
        keep |= (starts >= s) & (starts < e)
    keep &= ends > starts
    return np.where(keep, ids_a, IGNORE_INDEX).tolist()  # type: ignore[no-any-return]


def _prepare_text(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], assistant_only: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The text to tokenize and the supervised character spans (empty: every token)."""
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        return messages[0]["content"] + (tokenizer.eos_token or ""), []
    text = render_fast(tokenizer, messages)
    return text, _assistant_spans(tokenizer, messages, text) if assistant_only else []


def _labels_from_encoding(
    enc: Any, ids: list[int], spans: list[tuple[int, int]], *, bos_id: int | None
) -> list[int] | None:
    """:func:`_labels` in O(spans) Rust calls (``char_to_token``); None where it cannot tell."""
    if not spans:
        labels = list(ids)
        if labels and labels[0] == bos_id:
            labels[0] = IGNORE_INDEX
        return labels
    labels = [IGNORE_INDEX] * len(ids)
    for s, e in spans:
        first, last = enc.char_to_token(s), enc.char_to_token(e - 1)
        if first is None or last is None:
            return None
        if enc.token_to_chars(first)[0] < s:  # the token began before the reply
            first += 1
        labels[first : last + 1] = ids[first : last + 1]
    return labels


_BACKEND_OK: dict[int, bool] = {}


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer when calling it directly gives the same ids as ``tokenizer(...)``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    key = id(tokenizer)
    if key not in _BACKEND_OK:
        probe = f"<|user|>\nHbA1c 8.2%, été{tokenizer.eos_token or ''}\n ok"
        ok = backend.encode(probe, add_special_tokens=True).ids == list(
            tokenizer(probe, add_special_tokens=True)["input_ids"]
        )
        _BACKEND_OK[key] = ok
    return backend if _BACKEND_OK[key] else None


def tokenize_batch(
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_seq_len: int,
    assistant_only: bool = True,
) -> list[TokenizedExample]:
    """:func:`tokenize_messages` for many conversations with one fast-tokenizer call."""
    prepared = [_prepare_text(tokenizer, m, assistant_only) for m in conversations]
    texts = [text for text, _ in prepared]
    bos = tokenizer.bos_token_id
    backend = _backend(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []
    if backend is not None:
        for enc, (_, spans) in zip(
            backend.encode_batch(texts, add_special_tokens=True), prepared, strict=True
        ):
            ids = enc.ids
            labels = _labels_from_encoding(enc, ids, spans, bos_id=bos)
            if labels is None:
                labels = _labels(ids, enc.offsets, spans, bos_id=bos)
            rows.append((ids, labels))
    else:
        enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
        for i, (_, spans) in enumerate(prepared):
            ids = list(enc["input_ids"][i])
            rows.append((ids, _labels(ids, enc["offset_mapping"][i], spans, bos_id=bos)))
    out = []
    for ids, labels in rows:
        truncated = len(ids) > max_seq_len
        if truncated:
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        out.append(
            TokenizedExample(input_ids=tuple(ids), labels=tuple(labels), truncated=truncated)
        )
    return out


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
        assistant_only: Take loss on every assistant reply (and its EOS) only; otherwise on
            every token but the first.
    """
    (example,) = tokenize_batch(
        tokenizer, [messages], max_seq_len=max_seq_len, assistant_only=assistant_only
    )
    return example
