"""Chat template -> token ids with assistant-only labels, one path for training and serving.

A conversation is rendered with the *served* chat template (the tokenizer's own, or
TinyLlama's Zephyr format when it has none; see :func:`medlora._template.served_chat_template`)
and tokenized without adding special tokens: exactly what vLLM's chat endpoint and
llama-cpp-python's chat handler do with the exported template. So the ids start with one BOS
when the tokenizer adds one on encode (the template renders it, or gains ``{{ bos_token }}``)
and with none when it does not (SmolLM2, whose ``bos_token`` is ChatML's ``<|im_start|>``).

Labels keep the tokens of every assistant reply and of the template text after it through the
first special token, the one that ends the turn (``</s>``, ``<|im_end|>``, ``<|eot_id|>``), so
the model learns to stop; everything else is ``-100``. Replies are located from the structure
of the rendering (:mod:`medlora.data._chat`), never by searching for their text. Padding is
masked by position, never by token id (pad is EOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from medlora._errors import DatasetError, DatasetProblem
from medlora._template import strip_leading_bos
from medlora.data._chat import ChatFormat, TemplateMismatch, chat_format

IGNORE_INDEX = -100
"""Label value that the loss ignores."""


@attrs.frozen(kw_only=True)
class TokenizedExample:
    """One training example: token ids and their labels (``-100`` where no loss is taken)."""

    input_ids: tuple[int, ...]
    """Token ids, starting with BOS when the model uses one."""
    labels: tuple[int, ...]
    """Same length as ``input_ids``; ``-100`` outside the supervised spans."""
    truncated: bool = False
    """Whether the example was cut to ``max_seq_len``."""

    def __len__(self) -> int:
        return len(self.input_ids)


def render(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool = False
) -> str:
    """Render messages with the served chat template, as ``tokenizer(text)`` expects them.

    ``tokenizer(render(...))["input_ids"]`` are the ids medlora trains on and servers build:
    the leading BOS text is left out when the tokenizer adds BOS itself (it puts it back once)
    and kept otherwise. A tokenizer that adds no BOS keeps the whole rendering: SmolLM2's text
    starts with ``<|im_start|>``.
    """
    fmt = chat_format(tokenizer)
    text = fmt.render(messages, generation_prompt=generation_prompt)
    return strip_leading_bos(text, tokenizer.bos_token) if fmt.adds_bos else text


def render_fast(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """:func:`render` without a generation prompt; skips Jinja for the default template."""
    fmt = chat_format(tokenizer)
    if not fmt.zephyr:
        return render(tokenizer, messages)
    text, _ = fmt.layout(messages)
    return strip_leading_bos(text, tokenizer.bos_token) if fmt.adds_bos else text


def encode_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool = False
) -> list[int]:
    """The ids a server builds for ``messages``: the served rendering, no special tokens added."""
    text = chat_format(tokenizer).render(messages, generation_prompt=generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


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
    fmt: ChatFormat, messages: Sequence[Mapping[str, str]], assistant_only: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The text to tokenize and the supervised character spans (empty: every token).

    A lone assistant message is raw text: no template, BOS as the tokenizer adds it, and EOS.
    """
    tokenizer = fmt.tokenizer
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        bos = (tokenizer.bos_token or "") if fmt.adds_bos else ""
        return bos + messages[0]["content"] + (tokenizer.eos_token or ""), []
    text, spans = fmt.layout(messages)
    return text, spans if assistant_only else []


def _prepare_all(
    fmt: ChatFormat,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    assistant_only: bool,
    first_index: int,
) -> list[tuple[str, list[tuple[int, int]]]]:
    """:func:`_prepare_text` of every conversation; every one the template cannot place is
    named in one :class:`~medlora.DatasetError`."""
    prepared, problems = [], []
    for index, messages in enumerate(conversations, start=first_index):
        try:
            prepared.append(_prepare_text(fmt, messages, assistant_only))
        except TemplateMismatch as exc:
            problems.append(DatasetProblem(str(exc), record_index=index, field="messages"))
    if problems:
        raise DatasetError(
            problems,
            hint="The chat template does not render these conversations as a sequence of "
            "turns, so their assistant replies cannot be located; fix or drop the records, or "
            "train with a template that renders each message's content once, in order.",
        )
    return prepared


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


def _backend(fmt: ChatFormat) -> Any:
    """The Rust tokenizer when calling it directly gives the same ids as ``tokenizer(...)``."""
    tokenizer = fmt.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if fmt.backend_ok is None:
        probe = (
            f"{tokenizer.bos_token or ''}<|user|>\nHbA1c 8.2%, été{tokenizer.eos_token or ''}\n ok"
        )
        fmt.backend_ok = backend.encode(probe, add_special_tokens=False).ids == list(
            tokenizer(probe, add_special_tokens=False)["input_ids"]
        )
    return backend if fmt.backend_ok else None


def _encode(
    fmt: ChatFormat, prepared: list[tuple[str, list[tuple[int, int]]]]
) -> list[tuple[list[int], list[int]]]:
    """Ids (no special tokens added: the text carries them) and labels of each text."""
    texts = [text for text, _ in prepared]
    bos = fmt.tokenizer.bos_token_id
    backend = _backend(fmt)
    rows: list[tuple[list[int], list[int]]] = []
    if backend is not None:
        for enc, (_, spans) in zip(
            backend.encode_batch(texts, add_special_tokens=False), prepared, strict=True
        ):
            ids = enc.ids
            labels = _labels_from_encoding(enc, ids, spans, bos_id=bos)
            if labels is None:
                labels = _labels(ids, enc.offsets, spans, bos_id=bos)
            rows.append((ids, labels))
        return rows
    enc = fmt.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for i, (_, spans) in enumerate(prepared):
        ids = list(enc["input_ids"][i])
        rows.append((ids, _labels(ids, enc["offset_mapping"][i], spans, bos_id=bos)))
    return rows


def tokenize_batch(
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_seq_len: int,
    assistant_only: bool = True,
) -> list[TokenizedExample]:
    """:func:`tokenize_messages` for many conversations with one fast-tokenizer call.

    Raises:
        DatasetError: The chat template does not render some conversations as their turns;
            each is named by its index in ``conversations``.
    """
    return tokenize_from(tokenizer, conversations, max_seq_len, assistant_only, first_index=0)


def tokenize_from(
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    max_seq_len: int,
    assistant_only: bool,
    *,
    first_index: int,
) -> list[TokenizedExample]:
    """:func:`tokenize_batch` of a chunk whose first conversation is record ``first_index``."""
    fmt = chat_format(tokenizer)
    prepared = _prepare_all(fmt, conversations, assistant_only, first_index)
    out = []
    for ids, labels in _encode(fmt, prepared):
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
        assistant_only: Take loss on every assistant reply and the token that ends its
            turn only (see the module docstring); otherwise on every token but BOS.

    Returns:
        The ids a server builds from the served template (``add_special_tokens=False``): one
        BOS when the tokenizer adds one on encode, none when it does not.

    Raises:
        DatasetError: The chat template does not render the conversation as its turns.
    """
    (example,) = tokenize_batch(
        tokenizer, [messages], max_seq_len=max_seq_len, assistant_only=assistant_only
    )
    return example
