"""The tokenizer half of a GGUF file: a Llama SentencePiece vocabulary as llama.cpp reads it.

llama.cpp's "llama" tokenizer merges pieces by *score*, so the scores must be real: taken from
``tokenizer.model`` when it exists, otherwise derived from the ids of ``tokenizer.json``
(``-id``; FACTS: placeholder scores of -1000 give wrong tokenization on most lines).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlora._errors import ExportError
from medlora._optional import require

# llama.cpp token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_ADDED_SCORE = -1000.0  # what llama.cpp's converter gives tokens added on top of the model
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class GGUFVocab:
    """Tokens, scores and token types, one per embedding row."""

    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    source: str
    """``"tokenizer.model"`` or ``"tokenizer.json"``: where the pieces came from."""
    n_tokenizer: int
    """Tokens the tokenizer itself has; the rest up to the embedding rows are ``[PAD{i}]``."""


def load_vocab(model_dir: Path, n_vocab: int) -> GGUFVocab:
    """Read the tokenizer of ``model_dir`` and pad it to ``n_vocab`` tokens (the embedding rows).

    Raises:
        ExportError: No Llama SentencePiece-style tokenizer in the directory, or one with more
            tokens than the embedding has rows.
    """
    added = _added_tokens(model_dir)
    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types = _from_sentencepiece(model_dir / "tokenizer.model")
        source = "tokenizer.model"
    elif (model_dir / "tokenizer.json").is_file():
        tokens, scores, types = _from_tokenizer_json(model_dir / "tokenizer.json", added)
        source = "tokenizer.json"
    else:
        raise ExportError(
            f"{model_dir} has neither tokenizer.model nor tokenizer.json; copy the base model's "
            "tokenizer files into it before exporting"
        )
    for token_id, (content, special) in sorted(added.items()):
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
        scores.append(_ADDED_SCORE)
        types.append(UNUSED)
    return GGUFVocab(tokens, scores, types, source, n_tokenizer)


def add_vocab(writer: Any, vocab: GGUFVocab, model_dir: Path) -> None:
    """Write the tokenizer keys, special ids, add-bos/eos flags and the chat template; the
    add-bos flag is what the tokenizer does when it encodes (probed)."""
    gguf = require("gguf", "GGUF export")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    quiet = logging.getLogger("gguf.vocab")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about the unused <pair> template of every Llama
    try:
        special = gguf.SpecialVocab(model_dir, n_vocab=len(vocab.tokens))
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
    path: Path, added: dict[int, tuple[str, bool]]
) -> tuple[list[bytes], list[float], list[int]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        raise ExportError(
            f"{path} is not a Llama SentencePiece-style tokenizer (BPE with byte fallback); "
            "only Llama-2-style tokenizers can be exported to GGUF, ideally with tokenizer.model"
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


def _added_tokens(model_dir: Path) -> dict[int, tuple[str, bool]]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {int(t["id"]): (str(t["content"]), bool(t.get("special"))) for t in data["added_tokens"]}


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
