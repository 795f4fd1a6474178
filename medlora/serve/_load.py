"""``medlora.load``: one interface over a merged HF directory, an adapter, or a GGUF file.

Every loaded model can ``generate`` from raw text, ``chat`` through its chat template (stopping
at EOS), stream either one as an iterator of text pieces, and score text for evaluation
(:meth:`~HFModel.logprobs`, :meth:`~HFModel.loglikelihood`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    Protocol,
    TypedDict,
    Unpack,
    overload,
    runtime_checkable,
)

import attrs

from medlora._errors import ModelLoadError
from medlora._io import restore

if TYPE_CHECKING:
    from medlora.training import QuantizationConfig

Messages = Sequence[Mapping[str, str]]


@attrs.frozen(kw_only=True)
class Loglikelihood:
    """How likely a model finds ``continuation`` after ``context``."""

    logprob: float
    """Sum of the continuation tokens' log-probabilities (nats)."""
    n_tokens: int
    """Number of continuation tokens scored."""
    greedy: bool
    """Whether greedy decoding would have produced exactly these tokens."""


class GenerateKeywords(TypedDict, total=False):
    """The keywords ``generate`` and ``chat`` take besides ``stream`` (each optional)."""

    max_new_tokens: int
    """Most tokens to generate (128)."""
    temperature: float
    """0 (the default) is greedy; above 0, sampling at this temperature."""
    stop: str | Sequence[str] | None
    """Text that ends the reply where it appears (not included)."""
    seed: int
    """Sampling seed (0)."""


@runtime_checkable
class LoadedModel(Protocol):
    """What :func:`~medlora.load` returns, whatever it loaded: a merged Hugging Face
    directory or an adapter (:class:`HFModel`), or a GGUF file (:class:`GGUFModel`).

    ``generate(prompt)`` continues raw text (BOS added); ``chat(messages)`` answers a
    conversation rendered with the chat template. Both return the text, or with
    ``stream=True`` an iterator of text pieces, and stop at EOS (or the chat template's end of
    a reply), a ``stop`` string or ``max_new_tokens`` (:class:`GenerateKeywords`).
    """

    path: Path
    """Where the model was loaded from."""

    @property
    def eos_token(self) -> str:
        """The end-of-sequence token's text."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, with BOS where the model adds one."""

    def render(self, messages: Messages, *, generation_prompt: bool = False) -> str:
        """The conversation as text, through the model's chat template."""

    @overload
    def generate(
        self, prompt: str, *, stream: Literal[False] = ..., **options: Unpack[GenerateKeywords]
    ) -> str: ...
    @overload
    def generate(
        self, prompt: str, *, stream: Literal[True], **options: Unpack[GenerateKeywords]
    ) -> Iterator[str]: ...
    @overload
    def chat(
        self,
        messages: Messages,
        *,
        stream: Literal[False] = ...,
        **options: Unpack[GenerateKeywords],
    ) -> str: ...
    @overload
    def chat(
        self, messages: Messages, *, stream: Literal[True], **options: Unpack[GenerateKeywords]
    ) -> Iterator[str]: ...

    def chat_many(
        self, conversations: Sequence[Messages], *, max_new_tokens: int = 128, batch_size: int = 8
    ) -> list[str]:
        """Greedy replies to several conversations."""

    def logprobs(self, ids: Sequence[int]) -> list[float]:
        """``log P(ids[i] | ids[:i])`` for ``i = 1 .. len(ids) - 1``."""

    def loglikelihood(self, context: str, continuation: str) -> Loglikelihood:
        """Score ``continuation`` after ``context``."""

    def loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[Loglikelihood]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``."""

    def close(self) -> None:
        """Release the weights."""

    def __enter__(self) -> LoadedModel: ...

    def __exit__(self, *exc: object) -> None: ...


CACHE_RENAMED_IN = (5, 24)
"""The transformers release whose models take and return the KV cache as ``cache`` (earlier:
``past_key_values``, still accepted there with a deprecation warning)."""


def cache_keyword(transformers_version: str) -> str:
    """The keyword (and output field) of the KV cache in that transformers release."""
    major, minor = re.match(r"(\d+)\.(\d+)", transformers_version).groups()  # type: ignore[union-attr]
    return "cache" if (int(major), int(minor)) >= CACHE_RENAMED_IN else "past_key_values"


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    return keep


def _pieces(tokens: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """Turn a stream of decoded full texts into deltas, ending at the first stop string."""
    emitted = 0
    text = ""
    for text in tokens:
        cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
        if cut >= 0:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text) - _held_back(text, stops)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if len(text) > emitted:
        yield text[emitted:]


def _sampling(options: GenerateKeywords) -> _Sampling:
    """``generate``/``chat`` keywords with the defaults filled in.

    Raises:
        TypeError: A keyword that is not one of :class:`GenerateKeywords`.
    """
    unknown = sorted(set(options) - set(GenerateKeywords.__annotations__))
    if unknown:
        raise TypeError(
            f"unexpected keyword {', '.join(unknown)}; generate() and chat() take "
            f"{', '.join(GenerateKeywords.__annotations__)} and stream"
        )
    return _Sampling(
        max_new_tokens=options.get("max_new_tokens", 128),
        temperature=options.get("temperature", 0.0),
        stops=_stops(options.get("stop")),
        seed=options.get("seed", 0),
    )


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


@attrs.frozen(kw_only=True)
class _Sampling:
    """The keywords of one ``generate``/``chat`` call, defaults filled in."""

    max_new_tokens: int
    temperature: float
    stops: list[str]
    seed: int


class _Backend:
    """What both backends share: ``generate``/``chat``, typed once over the backends'
    ``_generate``/``_chat``, and scoring on top of ``tokenize`` and ``_log_softmax``."""

    def render(  # pragma: no cover - overridden
        self, messages: Messages, *, generation_prompt: bool = False
    ) -> str:
        raise NotImplementedError

    def _generate(  # pragma: no cover - overridden
        self, prompt: str, sampling: _Sampling, *, stream: bool
    ) -> str | Iterator[str]:
        raise NotImplementedError

    def _chat(
        self, messages: Messages, sampling: _Sampling, *, stream: bool
    ) -> str | Iterator[str]:
        prompt = self.render(messages, generation_prompt=True)
        return self._generate(prompt, sampling, stream=stream)

    @overload
    def generate(
        self, prompt: str, *, stream: Literal[False] = ..., **options: Unpack[GenerateKeywords]
    ) -> str: ...
    @overload
    def generate(
        self, prompt: str, *, stream: Literal[True], **options: Unpack[GenerateKeywords]
    ) -> Iterator[str]: ...
    def generate(
        self, prompt: str, *, stream: bool = False, **options: Unpack[GenerateKeywords]
    ) -> str | Iterator[str]:
        """Continue ``prompt`` (raw text, BOS added) until EOS, a stop string or
        ``max_new_tokens`` (:class:`GenerateKeywords`: 128 tokens, greedy, seed 0).

        Returns:
            The text, or with ``stream=True`` an iterator of text pieces.
        """
        return self._generate(prompt, _sampling(options), stream=stream)

    @overload
    def chat(
        self,
        messages: Messages,
        *,
        stream: Literal[False] = ...,
        **options: Unpack[GenerateKeywords],
    ) -> str: ...
    @overload
    def chat(
        self, messages: Messages, *, stream: Literal[True], **options: Unpack[GenerateKeywords]
    ) -> Iterator[str]: ...
    def chat(
        self, messages: Messages, *, stream: bool = False, **options: Unpack[GenerateKeywords]
    ) -> str | Iterator[str]:
        """Answer a conversation (``{"role", "content"}`` mappings) through the chat template;
        generation stops at EOS or the template's end of a reply (:class:`GenerateKeywords`).

        Returns:
            The reply, or with ``stream=True`` an iterator of text pieces.
        """
        return self._chat(messages, _sampling(options), stream=stream)

    def tokenize(self, text: str) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _log_softmax(self, ids: Sequence[int]) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def logprobs(self, ids: Sequence[int]) -> list[float]:
        """``log P(ids[i] | ids[:i])`` for ``i = 1 .. len(ids) - 1``."""
        lp = self._log_softmax(ids)  # (seq, vocab)
        return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]

    def loglikelihood(self, context: str, continuation: str) -> Loglikelihood:
        """Score ``continuation`` after ``context`` (lm-eval's convention).

        Context and context + continuation are tokenized (with BOS); the continuation is the
        tail by which the second is longer, so tokens merged across the boundary count once.
        """
        ctx = self.tokenize(context)
        whole = self.tokenize(context + continuation)
        n = max(1, len(whole) - len(ctx))
        lp = self._log_softmax(whole)  # (seq, vocab)
        start = len(whole) - n
        total = 0.0
        greedy = True
        for i in range(start, len(whole)):
            row = lp[i - 1]
            total += float(row[whole[i]])
            greedy = greedy and int(row.argmax()) == whole[i]
        return Loglikelihood(logprob=total, n_tokens=n, greedy=greedy)

    def loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[Loglikelihood]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``."""
        return [self.loglikelihood(context, c) for c in continuations]


@attrs.define
class HFModel(_Backend):
    """A transformers causal LM (merged weights, or a base with a peft adapter on top)."""

    model: Any
    """The ``torch.nn.Module`` (eval mode)."""
    tokenizer: Any
    """Its fast tokenizer."""
    path: Path
    """Where it was loaded from."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids with BOS; special-token text such as ``</s>`` becomes the special id."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    @property
    def eos_token(self) -> str:
        """The end-of-sequence token's text (``</s>``)."""
        return str(self.tokenizer.eos_token or "")

    def render(self, messages: Messages, *, generation_prompt: bool = False) -> str:
        """The conversation as text, through the tokenizer's chat template."""
        from medlora.data import render

        return render(self.tokenizer, list(messages), generation_prompt=generation_prompt)

    def _log_softmax(self, ids: Sequence[int]) -> Any:
        import torch

        with torch.no_grad():
            x = torch.tensor([list(ids)], device=self._device())
            logits = self.model(input_ids=x).logits[0].float()  # (seq, vocab)
            return torch.log_softmax(logits, -1).cpu().numpy()

    def _cache_key(self) -> str:
        import transformers

        return cache_keyword(transformers.__version__)

    def loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[Loglikelihood]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``: the context
        runs once and its KV cache serves every continuation (one batched forward), which is
        what makes multiple-choice scoring cheap on a long question.

        Falls back to one :meth:`loglikelihood` per continuation when a continuation's tokens
        do not extend the context's (a token merged across the boundary)."""
        import torch

        ctx = self.tokenize(context)
        wholes = [self.tokenize(context + c) for c in continuations]
        if len(ctx) < 2 or any(len(w) <= len(ctx) or w[: len(ctx)] != ctx for w in wholes):
            return super().loglikelihoods(context, continuations)
        key, device = self._cache_key(), self._device()
        tails = [w[len(ctx) - 1 :] for w in wholes]  # the context's last token + continuation
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id or 0
        # right padding needs no mask: causal attention keeps it out of the real positions
        batch = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=device)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ctx[:-1]], device=device), use_cache=True)
            cache = out[key]
            cache.batch_repeat_interleave(len(tails))
            logits = self.model(input_ids=batch, use_cache=True, **{key: cache}).logits
            lp = torch.log_softmax(logits.float(), -1).cpu()  # (options, width, vocab)
        results = []
        for row, tail in zip(lp, tails, strict=True):
            target = torch.tensor(tail[1:])
            picked = row[: len(tail) - 1].gather(1, target[:, None])[:, 0]
            greedy = bool((row[: len(tail) - 1].argmax(-1) == target).all())
            results.append(
                Loglikelihood(logprob=float(picked.sum()), n_tokens=len(tail) - 1, greedy=greedy)
            )
        return results

    def chat_many(
        self, conversations: Sequence[Messages], *, max_new_tokens: int = 128, batch_size: int = 8
    ) -> list[str]:
        """Greedy replies to several conversations, ``batch_size`` at a time (left-padded):
        on a CPU one decoding step costs about the same for eight rows as for one, since it
        is bound by reading the weights. Each reply stops at EOS or the template's end of a
        reply (:func:`medlora.data.stop_tokens`), as :meth:`chat` does."""
        import torch

        from medlora.data import stop_token_ids

        prompts = [self.tokenize(self.render(m, generation_prompt=True)) for m in conversations]
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        stops = stop_token_ids(self.tokenizer)
        replies: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids.to(self._device()),
                    attention_mask=mask.to(self._device()),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stops,
                    pad_token_id=pad,
                )
            for prompt, row in zip(chunk, out[:, width:].tolist(), strict=True):
                new = row[: min((row.index(s) for s in stops if s in row), default=len(row))]
                # decode with the prompt so SentencePiece keeps the first token's space
                prefix = self.tokenizer.decode(prompt, skip_special_tokens=True)
                text = self.tokenizer.decode(prompt + new, skip_special_tokens=True)
                replies.append(text[len(prefix) :])
        return replies

    def _device(self) -> Any:
        return next(p for p in self.model.parameters()).device

    def _token_stream(
        self, ids: list[int], max_new_tokens: int, temperature: float, seed: int
    ) -> Iterator[str]:
        import torch

        from medlora.data import stop_token_ids

        eos = set(stop_token_ids(self.tokenizer))
        generated: list[int] = []
        gen = torch.Generator().manual_seed(seed)
        x = torch.tensor([ids], device=self._device())
        key = self._cache_key()
        prefix = self.tokenizer.decode(ids, skip_special_tokens=True)
        past = None
        with torch.no_grad():
            for _ in range(max_new_tokens):
                out = self.model(input_ids=x, use_cache=True, **{key: past})
                past = out[key]
                logits = out.logits[0, -1].float().cpu()  # (vocab,)
                if temperature <= 0:
                    token = int(logits.argmax())
                else:
                    probs = torch.softmax(logits / temperature, -1)
                    token = int(torch.multinomial(probs, 1, generator=gen))
                if token in eos:
                    return
                generated.append(token)
                # decode with the prompt so SentencePiece keeps the first token's space
                text = self.tokenizer.decode(ids + generated, skip_special_tokens=True)
                yield text[len(prefix) :]
                x = torch.tensor([[token]], device=self._device())

    def _generate(self, prompt: str, sampling: _Sampling, *, stream: bool) -> str | Iterator[str]:
        tokens = self._token_stream(
            self.tokenize(prompt), sampling.max_new_tokens, sampling.temperature, sampling.seed
        )
        pieces = _pieces(tokens, sampling.stops)
        return pieces if stream else "".join(pieces)

    def close(self) -> None:
        """Release the weights."""
        self.model = None

    def __enter__(self) -> HFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.define
class GGUFModel(_Backend):
    """A GGUF file run by llama.cpp (opened through :func:`medlora.export.open_gguf`)."""

    llm: Any
    """The ``llama_cpp.Llama``."""
    path: Path
    """The GGUF file."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids with BOS; special-token text such as ``</s>`` becomes the special id."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def _token_text(self, key: str) -> str:
        token_id = int(self.llm.metadata.get(f"tokenizer.ggml.{key}_token_id", -1))
        if token_id < 0:
            return ""
        return bytes(self.llm.detokenize([token_id], special=True)).decode("utf-8", "replace")

    @property
    def eos_token(self) -> str:
        """The end-of-sequence token's text (``</s>``)."""
        return self._token_text("eos")

    def _adds_bos(self) -> bool:
        """Whether :meth:`tokenize` puts BOS first (the file's ``add_bos_token``, probed)."""
        bos = int(self.llm.metadata.get("tokenizer.ggml.bos_token_id", -1))
        added = self.llm.tokenize(b"Hi", add_bos=True, special=True)
        plain = self.llm.tokenize(b"Hi", add_bos=False, special=True)
        return bos >= 0 and list(added[:1]) == [bos] and list(plain[:1]) != [bos]

    def render(self, messages: Messages, *, generation_prompt: bool = False) -> str:
        """The conversation as text, through the chat template stored in the file, as
        :meth:`tokenize` expects it: without the leading BOS text only when tokenizing adds
        BOS (a SmolLM2 file keeps its first ``<|im_start|>``)."""
        from medlora._template import ZEPHYR_CHAT_TEMPLATE, render_template, strip_leading_bos

        source = self.llm.metadata.get("tokenizer.chat_template") or ZEPHYR_CHAT_TEMPLATE
        bos = self._token_text("bos")
        text = render_template(
            source,
            messages,
            bos_token=bos,
            eos_token=self.eos_token,
            generation_prompt=generation_prompt,
        )
        return strip_leading_bos(text, bos) if self._adds_bos() else text

    def _scores(self, start: int, stop: int) -> Any:
        """Log-softmax of llama.cpp's logits at positions ``start:stop`` of the last eval."""
        import numpy as np

        logits = np.array(self.llm.scores[start:stop], dtype=np.float64)  # (seq, vocab)
        logits -= logits.max(-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    def _require_logits_all(self) -> None:
        if not getattr(self.llm, "_logits_all", True):
            raise ModelLoadError(
                f"{self.path} was loaded without logits_all; load it with "
                "medlora.load(path, logits_all=True) to score text"
            )

    def _log_softmax(self, ids: Sequence[int]) -> Any:
        self._require_logits_all()
        self.llm.reset()
        self.llm.eval(list(ids))
        return self._scores(0, len(ids))

    def loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[Loglikelihood]:
        """:meth:`loglikelihood` of each continuation after one shared ``context``: llama.cpp
        evaluates the context once and keeps its KV cache for every continuation (the prefix
        reuse llama-cpp-python's own generation does), falling back to one by one when a
        continuation's tokens do not extend the context's."""
        import numpy as np

        ctx = self.tokenize(context)
        wholes = [self.tokenize(context + c) for c in continuations]
        if len(ctx) < 2 or any(len(w) <= len(ctx) or w[: len(ctx)] != ctx for w in wholes):
            return super().loglikelihoods(context, continuations)
        self._require_logits_all()
        self.llm.reset()
        self.llm.eval(ctx[:-1])
        results = []
        for whole in wholes:
            self.llm.n_tokens = len(ctx) - 1  # forget the previous continuation, keep the context
            self.llm.eval(whole[len(ctx) - 1 :])
            rows = self._scores(len(ctx) - 1, len(whole) - 1)  # (continuation, vocab)
            target = np.array(whole[len(ctx) :])
            results.append(
                Loglikelihood(
                    logprob=float(rows[np.arange(len(target)), target].sum()),
                    n_tokens=len(target),
                    greedy=bool((rows.argmax(-1) == target).all()),
                )
            )
        return results

    def _stream(self, chunks: Iterator[Any], key: str) -> Iterator[str]:
        for chunk in chunks:
            choice = chunk["choices"][0]
            piece = choice["delta"].get("content") if key == "delta" else choice["text"]
            if piece:
                yield piece

    def _generate(self, prompt: str, sampling: _Sampling, *, stream: bool) -> str | Iterator[str]:
        out = self.llm.create_completion(prompt, stream=stream, **_llama_sampling(sampling))
        return self._stream(out, "text") if stream else str(out["choices"][0]["text"])

    def _chat(
        self, messages: Messages, sampling: _Sampling, *, stream: bool
    ) -> str | Iterator[str]:
        """Through llama-cpp-python's chat handler, with the chat template stored in the file."""
        out = self.llm.create_chat_completion(
            messages=[dict(m) for m in messages], stream=stream, **_llama_sampling(sampling)
        )
        if stream:
            return self._stream(out, "delta")
        return str(out["choices"][0]["message"]["content"] or "")

    def chat_many(
        self, conversations: Sequence[Messages], *, max_new_tokens: int = 128, batch_size: int = 8
    ) -> list[str]:
        """Greedy replies to several conversations, one at a time, each prompt rendered by
        :meth:`render` and tokenized by :meth:`tokenize`: the token ids training and the other
        backends see, so an evaluation compares models rather than chat handlers (:meth:`chat`
        goes through llama-cpp-python's handler, as a server does). Stops at EOS."""
        del batch_size
        return [
            self.generate(self.render(m, generation_prompt=True), max_new_tokens=max_new_tokens)
            for m in conversations
        ]

    def close(self) -> None:
        """Free llama.cpp's model and context."""
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _llama_sampling(sampling: _Sampling) -> dict[str, Any]:
    """llama-cpp-python's keywords for ``sampling``."""
    return {
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "stop": sampling.stops or None,
        "seed": sampling.seed,
    }


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"


def load(
    path: str | Path,
    *,
    base: str | Path | None = None,
    n_ctx: int = 2048,
    logits_all: bool = True,
    n_threads: int | None = None,
    quantization: QuantizationConfig | None = None,
) -> LoadedModel:
    """Load a model for generation, chat and scoring: a :class:`LoadedModel`.

    Args:
        path: A merged Hugging Face directory (``config.json`` + safetensors), a peft adapter
            directory (``adapter_config.json``), or a ``.gguf`` file.
        base: For an adapter, the base model directory or hub id (default: the one named in
            ``adapter_config.json``).
        n_ctx: Context length for GGUF files.
        logits_all: For GGUF files, keep every position's logits (needed for scoring).
        n_threads: CPU threads for GGUF files (default: llama.cpp's choice).
        quantization: For a Hugging Face directory or an adapter's base, load the weights in
            4-bit as QLoRA training does (``QuantizationConfig()``): an adapter then runs on
            exactly the base it was trained against. Default: float32.

    A directory an interrupted export or training run left beside its place (complete, under
    a temporary name) is put back first, with one logged line.

    Raises:
        ModelLoadError: The path is none of the three kinds, or its files cannot be loaded.
    """
    path = Path(path).expanduser()
    restore(path)
    if _is_gguf(path):
        from medlora.export import open_gguf

        try:
            llm = open_gguf(path, n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise ModelLoadError(f"llama.cpp cannot load {path}: {exc}") from exc
        return GGUFModel(llm=llm, path=path)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return _load_adapter(path, base, quantization)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf(path, quantization)
    raise ModelLoadError(
        f"{path} is not a model medlora can load: pass a merged Hugging Face directory "
        "(config.json), an adapter directory (adapter_config.json) or a .gguf file."
    )


def _base_weights(path: Path, quantization: QuantizationConfig | None) -> Any:
    """A causal LM in float32, or 4-bit through training's own loader."""
    import torch
    from transformers import AutoModelForCausalLM

    if quantization is not None:
        from medlora.training import load_base_model

        return load_base_model(path, quantization)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _load_hf(path: Path, quantization: QuantizationConfig | None = None) -> HFModel:
    from medlora._hub import load_tokenizer

    try:
        model = _base_weights(path, quantization)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises many unrelated types here
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from exc
    return HFModel(model=model.eval(), tokenizer=load_tokenizer(path), path=path)


def _load_adapter(
    path: Path, base: str | Path | None, quantization: QuantizationConfig | None = None
) -> HFModel:
    from peft import PeftModel

    from medlora._hub import adapter_base, load_tokenizer, resolve_model

    base_dir = resolve_model(base if base is not None else adapter_base(path))
    try:
        model = PeftModel.from_pretrained(_base_weights(base_dir, quantization), path)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers/peft raise many unrelated types here
        raise ModelLoadError(f"cannot apply the adapter {path} to {base_dir}: {exc}") from exc
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base_dir
    return HFModel(model=model.eval(), tokenizer=load_tokenizer(tokenizer_dir), path=path)
