"""Byte-level BPE vocabularies (GPT-2 style: Llama 3, SmolLM2, Qwen2) for GGUF.

llama.cpp's ``gpt2`` tokenizer re-implements each family's *pre-tokenizer* (the rules that cut
text into words before the merges) under a name stored in ``tokenizer.ggml.pre``. A wrong name
loads fine and tokenizes some text differently from training. llama.cpp's own converter picks
the name by hashing the tokenizer's ids on one check text; medlora reads it from the structure of
``tokenizer.json`` (the ``pre_tokenizer`` steps and the BPE ``ignore_merges`` flag), then proves
it: :func:`check_tokenization` tokenizes a hard check corpus with llama.cpp and with the HF
tokenizer and refuses the export at the first line where the ids differ.

Recognised (``tokenizer.json`` structure -> llama.cpp name):

* ``ByteLevel`` with its GPT-2 regex -> ``gpt-2``
* ``Digits(individual_digits)`` then ``ByteLevel`` with its regex (SmolLM, StarCoder) -> ``smollm``
* ``Split`` on Llama 3's pattern then ``ByteLevel`` -> ``llama-bpe`` with ``ignore_merges``
  (Meta's files), ``smaug-bpe`` without (the same split, merges always applied)
* ``Split`` on Qwen2's pattern (single digits) then ``ByteLevel`` -> ``qwen2``
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from medlora._errors import ExportError
from medlora._pretokenize import LLAMA3_SPLIT, QWEN2_SPLIT

# The split patterns as they appear in the families' tokenizer.json files.
_SPLITS = {LLAMA3_SPLIT: "Split(llama3)", QWEN2_SPLIT: "Split(qwen2)"}

# (pre-tokenizer steps, ignore_merges) -> llama.cpp's tokenizer.ggml.pre
_PRE_TOKENIZERS: dict[tuple[tuple[str, ...], bool], str] = {
    (("ByteLevel(regex)",), False): "gpt-2",
    (("Digits(individual)", "ByteLevel(regex)"), False): "smollm",
    (("Split(llama3)", "ByteLevel"), True): "llama-bpe",
    (("Split(llama3)", "ByteLevel"), False): "smaug-bpe",
    (("Split(qwen2)", "ByteLevel"), False): "qwen2",
}
CHECK_CORPUS = "resources/tokenizer_check.jsonl"
"""The hard check corpus, relative to the ``medlora.export`` package."""


def byte_level_pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for the tokenizer in ``model_dir``, read from the
    pipeline transformers actually builds (some tokenizer classes replace parts of
    ``tokenizer.json``: ``Qwen2Tokenizer`` adds an NFC normalizer).

    Raises:
        ExportError: Not a byte-level BPE, or one llama.cpp cannot reproduce (see
            :func:`pre_tokenizer_name`).
    """
    from medlora._hub import load_tokenizer

    path = model_dir / "tokenizer.json"
    pipeline = _pipeline(load_tokenizer(model_dir).backend_tokenizer)
    if not is_byte_level_bpe(pipeline):
        model = pipeline.get("model") or {}
        decoder = (pipeline.get("decoder") or {}).get("type")
        raise ExportError(
            f"{path} holds a {model.get('type')} tokenizer (decoder {decoder}) that is neither "
            "Llama SentencePiece-style (BPE with byte fallback) nor byte-level BPE (GPT-2 style: "
            "ByteLevel decoder); only those two can be exported to GGUF"
        )
    return pre_tokenizer_name(pipeline, path)


def _pipeline(backend: Any) -> dict[str, Any]:
    """The parts of a ``tokenizers.Tokenizer`` that decide how text is split, in
    ``tokenizer.json``'s layout (without the vocabulary and merges: 17 MB for Llama 3)."""

    def state(component: Any) -> Any:
        return None if component is None else json.loads(component.__getstate__())

    model = backend.model
    flags = ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")
    return {
        "normalizer": state(backend.normalizer),
        "pre_tokenizer": state(backend.pre_tokenizer),
        "decoder": state(backend.decoder),
        "model": {
            "type": type(model).__name__,
            "ignore_merges": getattr(model, "ignore_merges", False),
            **{flag: getattr(model, flag, None) for flag in flags},
        },
    }


def is_byte_level_bpe(data: Mapping[str, Any]) -> bool:
    """Whether a parsed ``tokenizer.json`` is a byte-level BPE (no SentencePiece byte fallback)."""
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    return (
        model.get("type") == "BPE"
        and not model.get("byte_fallback", False)
        and decoder.get("type") == "ByteLevel"
    )


def pre_tokenizer_name(data: Mapping[str, Any], path: Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json``.

    Raises:
        ExportError: A normalizer, BPE option or pre-tokenizer that llama.cpp does not
            implement (or medlora does not recognise), named in the message.
    """
    model = data.get("model") or {}
    unsupported = [
        f"{key}={model[key]!r}"
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix")
        if model.get(key)
    ]
    if data.get("normalizer"):
        unsupported.insert(0, f"normalizer {_describe_normalizer(data['normalizer'])}")
    if unsupported:
        raise ExportError(
            f"{path}: {', '.join(unsupported)} cannot be exported to GGUF: llama.cpp's "
            "byte-level BPE tokenizer applies no normalizer and plain merges only"
        )
    steps = tuple(_describe_step(step) for step in _steps(data.get("pre_tokenizer")))
    ignore_merges = bool(model.get("ignore_merges", False))
    name = _PRE_TOKENIZERS.get((steps, ignore_merges))
    if name is None:
        shown = " -> ".join(steps) or "none"
        flag = ", ignore_merges" if ignore_merges else ""
        known = "; ".join(
            " -> ".join(s) + (" (ignore_merges)" if im else "") for s, im in _PRE_TOKENIZERS
        )
        raise ExportError(
            f"{path}: the pre-tokenizer {shown}{flag} is not one medlora can map to a llama.cpp "
            f"pre-tokenizer, so llama.cpp would split text differently from training. "
            f"Recognised: {known}. Convert with llama.cpp's convert_hf_to_gguf.py if llama.cpp "
            "supports this tokenizer."
        )
    return name


def check_corpus() -> list[tuple[str, str]]:
    """The hard check corpus: ``(kind, text)`` per line of ``resources/tokenizer_check.jsonl``
    (numbers, whitespace runs, code, accents, CJK, emoji, clinical shorthand, contractions,
    special-token-like text)."""
    source = resources.files("medlora.export").joinpath(CHECK_CORPUS)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line]
    return [(str(row["kind"]), str(row["text"])) for row in rows]


def check_tokenization(
    gguf_path: Path,
    tokenizer: Any,
    texts: Sequence[tuple[str, str]] | None = None,
    *,
    what: str = "",
) -> dict[str, Any]:
    """Tokenize every text with llama.cpp (``gguf_path``, vocabulary only) and with the HF
    ``tokenizer``, special tokens parsed and added on both sides, as chat prompts are.

    Args:
        gguf_path: A GGUF file; only its vocabulary is loaded.
        tokenizer: The HF tokenizer the model was trained with.
        texts: ``(kind, text)`` pairs; :func:`check_corpus` by default.
        what: How to name the vocabulary in the error (``"pre-tokenizer 'gpt-2'"``).

    Returns:
        ``{"matching": n, "total": n}`` when every text gives identical ids.

    Raises:
        ExportError: The first line whose ids differ, with the position, both tokens and
            how many lines differ in all.
    """
    from medlora._llama_cpp import captured_stderr, open_gguf

    rows = list(texts) if texts is not None else check_corpus()
    llm = open_gguf(gguf_path, n_ctx=64, vocab_only=True)
    try:  # quiet: llama.cpp warns (C and Python side) about the check line that doubles BOS
        with captured_stderr(), contextlib.redirect_stderr(io.StringIO()):
            theirs = [llm.tokenize(t.encode(), add_bos=True, special=True) for _, t in rows]
    finally:
        llm.close()
    ours = [list(tokenizer(text)["input_ids"]) for _, text in rows]
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    if differing:
        first = differing[0]
        hf, lc = ours[first], theirs[first]
        pos = next((i for i, (a, b) in enumerate(zip(hf, lc, strict=False)) if a != b), None)
        pos = min(len(hf), len(lc)) if pos is None else pos
        kind, text = rows[first]
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ExportError(
            f"llama.cpp{' with ' + what if what else ''} tokenizes {len(differing)} of "
            f"{len(rows)} check lines differently from the HF tokenizer; first line "
            f"{first + 1} ({kind}) {shown!r}: at token {pos} HF has "
            f"{_token(tokenizer, hf, pos)}, llama.cpp {_token(tokenizer, lc, pos)}",
            measurements={"matching": len(rows) - len(differing), "total": len(rows)},
        )
    return {"matching": len(rows), "total": len(rows)}


def _token(tokenizer: Any, ids: Sequence[int], pos: int) -> str:
    if pos >= len(ids):
        return "nothing (end of text)"
    return f"{ids[pos]} {tokenizer.convert_ids_to_tokens(ids[pos])!r}"


def _steps(pre: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [step for item in pre.get("pretokenizers", []) for step in _steps(item)]
    return [pre]


def _describe_step(step: Mapping[str, Any]) -> str:
    kind = str(step.get("type"))
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            return "ByteLevel(add_prefix_space)"
        return "ByteLevel(regex)" if step.get("use_regex", True) else "ByteLevel"
    if kind == "Digits":
        return "Digits(individual)" if step.get("individual_digits") else "Digits"
    if kind == "Split":
        pattern = step.get("pattern") or {}
        regex = pattern.get("Regex", pattern.get("String"))
        plain = step.get("behavior") == "Isolated" and not step.get("invert")
        if plain and regex in _SPLITS:
            return _SPLITS[str(regex)]
        return f"Split({regex!r}, {step.get('behavior')}{', invert' if step.get('invert') else ''})"
    return kind


def _describe_normalizer(normalizer: Mapping[str, Any]) -> str:
    if normalizer.get("type") == "Sequence":
        inner = [_describe_normalizer(n) for n in normalizer.get("normalizers", [])]
        return "Sequence[" + ", ".join(inner) + "]"
    return str(normalizer.get("type"))
