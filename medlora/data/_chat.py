"""Where each assistant reply lands in a rendered chat, read from the rendering's structure.

A conversation is rendered with the *served* chat template (:func:`medlora._template.
served_chat_template`), so its text, tokenized without adding special tokens, is what vLLM's
chat endpoint and llama-cpp-python's chat handler build. The supervised span of a reply runs
from the end of the generation prompt (where a server's prompt stops and the model starts
writing) through the reply to the end of the first special token the template writes after
it: the token that ends the turn (``</s>``, ``<|im_end|>``, ``<|eot_id|>``), which the model
must learn to emit.

Replies are located without searching for their text (a reply ``"s"`` would be found inside
``</s>``). The template is rendered once per sequence of roles with a unique placeholder as
every message's content; the real contents are put in the placeholders' places and the result
must equal a plain rendering of the real messages. A template that transforms contents (such
as ``| trim``) fails that check, and each reply is then found as the difference between the
rendering of the turns before it, with a generation prompt, and the rendering that includes
it. A conversation neither method can place raises :class:`TemplateMismatch`.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from medlora._template import (
    BOS_PREFIX,
    adds_bos,
    chat_template_of,
    is_zephyr,
    served_chat_template,
)

Messages = Sequence[Mapping[str, str]]
Span = tuple[int, int]

# Private-use characters: no template writes them, and the tokenizer never sees them.
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
_MAX_SKELETONS = 1024


def _placeholder(index: int) -> str:
    return f"\ue000{index}\ue001"


class TemplateMismatch(ValueError):
    """The chat template's rendering of a conversation cannot be split into its messages."""


@attrs.frozen(kw_only=True)
class _Skeleton:
    """A template's rendering of one sequence of roles, with every content left out."""

    pieces: tuple[str, ...]
    """Template text around the contents; one more than ``slots``."""
    slots: tuple[int, ...]
    """Index of the message whose content comes after ``pieces[k]``, in text order."""
    lead: tuple[int, ...]
    """Per slot: characters before the content that a reply's supervision starts with (the
    text between the end of the generation prompt and the reply, such as Llama-2's space)."""
    tail: tuple[int, ...]
    """Per slot: characters of the next piece that end the turn (through its first special
    token; 0 when it has none)."""


def _role_key(messages: Messages) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(tuple(sorted((k, v) for k, v in m.items() if k != "content")) for m in messages)


def _with_placeholders(messages: Messages) -> list[dict[str, str]]:
    return [{**m, "content": _placeholder(i)} for i, m in enumerate(messages)]


@attrs.define
class ChatFormat:
    """How one tokenizer's conversations are rendered, and where their replies lie."""

    tokenizer_ref: Callable[[], Any]
    """Returns the Hugging Face tokenizer (held weakly: the cache must not keep it alive)."""
    template: str
    """The chat template training reads (the tokenizer's, or the Zephyr default)."""
    served: str
    """``template`` as servers render it (:func:`medlora._template.served_chat_template`)."""
    adds_bos: bool
    """Whether the tokenizer puts BOS first when it encodes with special tokens."""
    specials: tuple[str, ...]
    """Texts of the special tokens, longest first."""
    backend_ok: bool | None = None
    """Whether the Rust tokenizer, called directly, gives ``tokenizer(...)``'s ids (probed once
    by ``medlora.data._tokenize``)."""
    _skeletons: dict[Any, _Skeleton | None] = attrs.field(factory=dict)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (its ``apply_chat_template`` renders the Jinja)."""
        return self.tokenizer_ref()

    @property
    def zephyr(self) -> bool:
        """Whether the template is medlora's default (rendered in Python, without Jinja)."""
        return is_zephyr(self.template)

    def render(self, messages: Messages, *, generation_prompt: bool = False) -> str:
        """The served template's rendering (BOS text included when the model uses one)."""
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            chat_template=self.served,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        return str(text)

    def layout(self, messages: Messages) -> tuple[str, list[Span]]:
        """The rendered text and the supervised character span of every assistant reply.

        Raises:
            TemplateMismatch: The rendering cannot be split into the messages.
        """
        if self.zephyr:
            return self._zephyr_layout(messages)
        text = self.render(messages)
        skeleton = self._skeleton(messages)
        if skeleton is not None:
            filled, spans = self._fill(skeleton, messages)
            if filled == text:
                return text, spans
        return text, self._prefix_spans(messages, text)

    def reply_end(self) -> str | None:
        """The special token the template writes right after a reply (``</s>``,
        ``<|im_end|>``, ``<|eot_id|>``): the token that ends the model's turn, so generation
        must stop on it. ``None`` when the template writes none (the model cannot learn to
        stop) or cannot render a user-assistant exchange."""
        marker = _placeholder(1)
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
        try:
            text = self.render(probe)
        except Exception:  # a template may demand a system turn or other roles
            return None
        after = text.partition(marker)[2]
        end = self._turn_end(after)
        return next((t for t in self.specials if after[:end].endswith(t)), None) if end else None

    def _zephyr_layout(self, messages: Messages) -> tuple[str, list[Span]]:
        """The default template's text and spans in pure Python (identical to its Jinja)."""
        eos = self.tokenizer.eos_token or ""
        bos = (self.tokenizer.bos_token or "") if self.served.startswith(BOS_PREFIX) else ""
        parts, spans, at = [bos], [], len(bos)
        for message in messages:
            role = message["role"]
            if role not in ("system", "user", "assistant"):
                continue
            header, content = f"<|{role}|>\n", message["content"]
            start = at + len(header)
            if role == "assistant":
                spans.append((start, start + len(content) + len(eos)))
            parts.append(f"{header}{content}{eos}\n")
            at = start + len(content) + len(eos) + 1
        return "".join(parts), spans

    def _skeleton(self, messages: Messages) -> _Skeleton | None:
        key = _role_key(messages)
        if key not in self._skeletons:
            if len(self._skeletons) >= _MAX_SKELETONS:  # unbounded role patterns: start over
                self._skeletons.clear()
            try:
                self._skeletons[key] = self._build_skeleton(messages)
            except Exception:  # the template rejects placeholders: the prefix method decides
                self._skeletons[key] = None
        return self._skeletons[key]

    def _build_skeleton(self, messages: Messages) -> _Skeleton | None:
        marked = _with_placeholders(messages)
        text = self.render(marked)
        found = list(_PLACEHOLDER.finditer(text))
        slots = tuple(int(m.group(1)) for m in found)
        assistants = {i for i, m in enumerate(messages) if m["role"] == "assistant"}
        if len(set(slots)) != len(slots) or not assistants <= set(slots):
            return None
        bounds = [0, *(x for m in found for x in m.span()), len(text)]
        pieces = tuple(text[bounds[k] : bounds[k + 1]] for k in range(0, len(bounds), 2))
        lead = []
        for index, match in zip(slots, found, strict=True):
            prompt = self._prompt_end(marked[:index], text) if index in assistants else None
            gap = text[prompt : match.start()] if prompt is not None else "x"
            lead.append(0 if gap.strip() else len(gap))
        tail = tuple(self._turn_end(pieces[k + 1]) for k in range(len(slots)))
        return _Skeleton(pieces=pieces, slots=slots, lead=tuple(lead), tail=tail)

    def _prompt_end(self, before: Messages, text: str) -> int | None:
        """Where the generation prompt after ``before`` ends in ``text``, if it is a prefix."""
        try:
            prompt = self.render(before, generation_prompt=True)
        except Exception:  # a template may refuse a conversation that ends on a user turn
            return None
        return len(prompt) if text.startswith(prompt) else None

    def _turn_end(self, after: str) -> int:
        """Length of ``after`` through its first special token (0 when it has none); at one
        position the longest special wins, as tokenizers match them."""
        first, end = len(after), 0
        for special in self.specials:  # longest first
            at = after.find(special)
            if 0 <= at < first:
                first, end = at, at + len(special)
        return end

    def _fill(self, skeleton: _Skeleton, messages: Messages) -> tuple[str, list[Span]]:
        parts, spans, at = [skeleton.pieces[0]], [], len(skeleton.pieces[0])
        for k, index in enumerate(skeleton.slots):
            content = messages[index]["content"]
            if messages[index]["role"] == "assistant":
                spans.append((at - skeleton.lead[k], at + len(content) + skeleton.tail[k]))
            parts += [content, skeleton.pieces[k + 1]]
            at += len(content) + len(skeleton.pieces[k + 1])
        return "".join(parts), sorted(spans)

    def _prefix_spans(self, messages: Messages, text: str) -> list[Span]:
        """Spans from renderings of growing prefixes (for templates that alter contents)."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            try:
                spans.append(self._prefix_span(messages, i, text))
            except TemplateMismatch:
                raise
            except Exception as exc:  # the template refused a prefix of the conversation
                raise TemplateMismatch(f"rendering turns 0..{i} failed: {exc}") from exc
        return spans

    def _prefix_span(self, messages: Messages, i: int, text: str) -> Span:
        prompt = self.render(messages[:i], generation_prompt=True)
        upto = self.render(messages[: i + 1])
        marker = _placeholder(i)
        marked = self.render([*messages[:i], {**messages[i], "content": marker}])
        if not (text.startswith(upto) and upto.startswith(prompt) and marked.startswith(prompt)):
            raise TemplateMismatch(
                f"turn {i}: the rendering of earlier turns is not a prefix of the whole"
            )
        pre, found, post = marked[len(prompt) :].partition(marker)
        region = upto[len(prompt) :]
        if not found or not region.startswith(pre) or not region.endswith(post):
            raise TemplateMismatch(f"turn {i}: the assistant reply is not in its rendering")
        if len(region) < len(pre) + len(post):
            raise TemplateMismatch(f"turn {i}: the assistant reply is not in its rendering")
        start = len(prompt) if not pre.strip() else len(prompt) + len(pre)
        return start, len(upto) - len(post) + self._turn_end(post)


_FORMATS: weakref.WeakKeyDictionary[Any, ChatFormat] = weakref.WeakKeyDictionary()


def _special_texts(tokenizer: Any) -> tuple[str, ...]:
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", ()) if t}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found |= {str(t.content) for t in added.values() if getattr(t, "special", False) and t.content}
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


def chat_format(tokenizer: Any) -> ChatFormat:
    """The :class:`ChatFormat` of ``tokenizer``, kept while its template, special tokens and
    whether it adds BOS stay the same."""
    template, specials, bos = chat_template_of(tokenizer), _special_texts(tokenizer), None
    try:
        cached = _FORMATS.get(tokenizer)
        ref: Callable[[], Any] = weakref.ref(tokenizer)
    except TypeError:  # not weak-referenceable: probed every time
        cached, ref = None, lambda: tokenizer
    if cached is not None and (cached.template, cached.specials) == (template, specials):
        bos = adds_bos(tokenizer)
        if cached.adds_bos == bos:
            return cached
    fmt = ChatFormat(
        tokenizer_ref=ref,
        template=template,
        served=served_chat_template(tokenizer, template),
        adds_bos=adds_bos(tokenizer) if bos is None else bos,
        specials=specials,
    )
    with contextlib.suppress(TypeError):
        _FORMATS[tokenizer] = fmt
    return fmt


def reply_end_token(tokenizer: Any) -> str | None:
    """The special token ``tokenizer``'s chat template writes right after an assistant reply
    (``</s>``, ``<|im_end|>``, ``<|eot_id|>``), which training teaches the model to emit; ``None``
    when the template writes none."""
    return chat_format(tokenizer).reply_end()


def stop_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Texts of the tokens generation stops on: EOS and the token the chat template ends a
    reply with, when that is another one (Llama-3's ``<|eot_id|>``), in that order."""
    eos = getattr(tokenizer, "eos_token", None)
    end = reply_end_token(tokenizer)
    return tuple(dict.fromkeys(t for t in (eos, end) if t))


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids of :func:`stop_tokens` (for ``generate``'s and ``generation_config``'s
    ``eos_token_id``)."""
    ids = tokenizer.convert_tokens_to_ids(list(stop_tokens(tokenizer)))
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
