"""The tokenizer half of a GGUF file, as llama.cpp reads it.

Two kinds of vocabulary export:

* Llama SentencePiece (``tokenizer.ggml.model = "llama"``): llama.cpp merges pieces by *score*,
  so the scores must be real: taken from ``tokenizer.model`` when it exists, otherwise derived
  from the ids of ``tokenizer.json`` (``-id``; placeholder scores of -1000 give wrong
  tokenization on most lines).
* Byte-level BPE (``"gpt2"``: Llama 3, SmolLM2, GPT-2): tokens, types and merges, plus the
  name of llama.cpp's pre-tokenizer that splits text as the HF tokenizer does
  (:mod:`medlora.export._gguf_bpe`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlora._errors import ExportError
from medlora._optional import require
from medlora.export._gguf_bpe import byte_level_pre_tokenizer

# llama.cpp token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_ADDED_SCORE = -1000.0  # what llama.cpp's converter gives tokens added on top of the model
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class GGUFVocab:
    """Tokens, scores and token types, one per embedding row."""

    tokens: list[bytes]
    scores: list[float]
    """One per token for ``"llama"``; empty for ``"gpt2"`` (llama.cpp merges by rank)."""
    types: list[int]
    source: str
    """``"tokenizer.model"`` or ``"tokenizer.json"``: where the pieces came from."""
    n_tokenizer: int
    """Tokens the tokenizer itself has; the rest up to the embedding rows are ``[PAD{i}]``."""
    model: str = "llama"
    """``tokenizer.ggml.model``: ``"llama"`` (SentencePiece) or ``"gpt2"`` (byte-level BPE)."""
    pre: str = "default"
    """``tokenizer.ggml.pre``: llama.cpp's pre-tokenizer (``"default"`` for SentencePiece)."""


def load_vocab(model_dir: Path, n_vocab: int) -> GGUFVocab:
    """Read the tokenizer of ``model_dir`` and pad it to ``n_vocab`` tokens (the embedding rows).

    Raises:
        ExportError: No tokenizer in the directory, one that is neither Llama SentencePiece
            nor a recognised byte-level BPE (the message names what is unsupported), or one
            with more tokens than the embedding has rows.
    """
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    added = _added_tokens(data)
    model, pre = "llama", "default"
    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types = _from_sentencepiece(model_dir / "tokenizer.model")
        source = "tokenizer.model"
    elif data:
        source = "tokenizer.json"
        if data.get("model", {}).get("byte_fallback", False):  # SentencePiece BPE
            tokens, scores, types = _from_tokenizer_json(path, data, added)
        else:
            model, pre = "gpt2", byte_level_pre_tokenizer(model_dir)
            (tokens, types), scores = _byte_level_tokens(data, added), []
    else:
        raise ExportError(
            f"{model_dir} has neither tokenizer.model nor tokenizer.json; copy the base model's "
            "tokenizer files into it before exporting"
        )
    for token_id, (content, special) in sorted(added.items()):  # byte-level: all included
        if token_id < len(tokens):
            continue
        if token_id != len(tokens):
            raise ExportError(f"added token {content!r} has id {token_id}; ids must be contiguous")
        tokens.append(content.encode("utf-8"))
        scores.append(_ADDED_SCORE)
        types.append(CONTROL if special else USER_DEFINED)
    n_tokenizer = len(tokens)
    if n_tokenizer > n_vocab:
        raise ExportError(
            f"the tokenizer has {n_tokenizer} tokens but the embedding only {n_vocab} rows; "
            "resize the embeddings (model.resize_token_embeddings) before exporting"
        )
    for i in range(n_tokenizer, n_vocab):  # llama.cpp needs one token per embedding row
        tokens.append(f"[PAD{i}]".encode())
        types.append(UNUSED)
        if model == "llama":
            scores.append(_ADDED_SCORE)
    return GGUFVocab(tokens, scores, types, source, n_tokenizer, model, pre)


def add_vocab(writer: Any, vocab: GGUFVocab, model_dir: Path) -> None:
    """Write the tokenizer keys, special ids, add-bos/eos flags and the chat template; the
    add-bos flag is what the tokenizer does when it encodes (probed)."""
    gguf = require("gguf", "GGUF export")
    byte_level = vocab.model == "gpt2"
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if not byte_level:  # llama.cpp ranks byte-level merges by their order, not by scores
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    quiet = logging.getLogger("gguf.vocab")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about the unused <pair> template of every Llama
    try:
        special = gguf.SpecialVocab(model_dir, load_merges=byte_level, n_vocab=len(vocab.tokens))
    finally:
        quiet.setLevel(level)
    # What the tokenizer does, not gguf-py's parse of it: transformers 5 keeps add_bos_token
    # only in tokenizer.json's post-processor, and without the key llama.cpp adds BOS to every
    # SentencePiece prompt, even for a model whose tokenizer adds none (SmolLM2-style ChatML).
    from medlora._hub import load_tokenizer
    from medlora._template import adds_bos

    special.add_special_token["bos"] = adds_bos(load_tokenizer(model_dir))
    if special.chat_template is None:  # older gguf-py versions miss chat_template.jinja
        template = model_dir / "chat_template.jinja"
        if template.is_file():
            special.chat_template = template.read_text(encoding="utf-8")
    if byte_level:
        # Unless the post-processor or tokenizer_config.json says to add BOS, the HF tokenizer
        # adds none; llama.cpp's default for some pre-tokenizers (llama-bpe) is to add one.
        special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)
    space_prefix = _add_space_prefix(model_dir)
    if space_prefix is not None:  # omit unless explicit: null -> False breaks tokenization
        writer.add_add_space_prefix(space_prefix)


def _from_sentencepiece(path: Path) -> tuple[list[bytes], list[float], list[int]]:
    spm = require("sentencepiece", "GGUF export from tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(float(sp.GetScore(i)))
        if sp.IsUnknown(i):
            types.append(UNKNOWN)
        elif sp.IsControl(i):
            types.append(CONTROL)
        elif sp.IsUnused(i):
            types.append(UNUSED)
        elif sp.IsByte(i):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return tokens, scores, types


def _from_tokenizer_json(
    path: Path, data: dict[str, Any], added: dict[int, tuple[str, bool]]
) -> tuple[list[bytes], list[float], list[int]]:
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(
            f"{path} holds a {model.get('type')} tokenizer with byte fallback; only BPE ones "
            "(Llama SentencePiece-style) can be exported to GGUF"
        )
    vocab: dict[str, int] = model["vocab"]
    by_id = {i: piece for piece, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ExportError(f"{path}: the vocabulary ids are not contiguous from 0")
    unk = model.get("unk_token") or _config_token(path.parent, "unk_token") or "<unk>"
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(len(by_id)):
        piece = by_id[i]
        tokens.append(piece.encode("utf-8"))
        if piece == unk:
            types.append(UNKNOWN)
        elif i in added:
            types.append(CONTROL if added[i][1] else USER_DEFINED)
        elif _BYTE_PIECE.fullmatch(piece):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    # SentencePiece BPE scores fall with the merge order, which is the id order: -id keeps it.
    scores = [0.0 if t != NORMAL else -float(i) for i, t in enumerate(types)]
    return tokens, scores, types


def _byte_level_tokens(
    data: Mapping[str, Any], added: Mapping[int, tuple[str, bool]]
) -> tuple[list[bytes], list[int]]:
    """Tokens in id order (byte-level spelling, as llama.cpp stores them) and their types:
    NORMAL for the BPE vocabulary, CONTROL for special added tokens, USER_DEFINED for the
    other added tokens, UNUSED ``[PAD{id}]`` for ids nobody uses."""
    by_id: dict[int, str] = {int(i): piece for piece, i in data["model"]["vocab"].items()}
    for token_id, (content, _special) in added.items():
        by_id[token_id] = content
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(max(by_id) + 1 if by_id else 0):
        if i not in by_id:
            tokens.append(f"[PAD{i}]".encode())
            types.append(UNUSED)
            continue
        tokens.append(by_id[i].encode("utf-8"))
        if i in added:
            types.append(CONTROL if added[i][1] else USER_DEFINED)
        else:
            types.append(NORMAL)
    return tokens, types


def _added_tokens(data: Mapping[str, Any]) -> dict[int, tuple[str, bool]]:
    """``{id: (content, special)}`` of a parsed ``tokenizer.json`` (empty without one)."""
    tokens = data.get("added_tokens") or []
    return {int(t["id"]): (str(t["content"]), bool(t.get("special"))) for t in tokens}


def _config_token(model_dir: Path, key: str) -> str | None:
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text(encoding="utf-8")).get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _add_space_prefix(model_dir: Path) -> bool | None:
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("add_prefix_space")
        if isinstance(value, bool):
            return value
    return None


def gguf_tokenizer_report(gguf_path: str | Path) -> dict[str, Any]:
    """Summarise the tokenizer stored in a GGUF file (for logs and parity reports).

    Returns:
        ``n_tokens``, ``n_unused``, ``model``, ``pre``, the special token ids that are set,
        ``add_bos``/``add_eos`` flags and ``has_chat_template``.
    """
    gguf = require("gguf", "Reading a GGUF file")
    reader = gguf.GGUFReader(str(gguf_path))
    fields = reader.fields

    def scalar(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    types = fields["tokenizer.ggml.token_type"].contents()
    report: dict[str, Any] = {
        "n_tokens": len(types),
        "n_unused": sum(1 for t in types if t == UNUSED),
        "model": scalar("tokenizer.ggml.model"),
        "pre": scalar("tokenizer.ggml.pre"),
        "has_chat_template": "tokenizer.chat_template" in fields,
    }
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        report[f"{name}_token_id"] = scalar(f"tokenizer.ggml.{key}_token_id")
    for name in ("bos", "eos"):
        report[f"add_{name}"] = scalar(f"tokenizer.ggml.add_{name}_token")
    return report
