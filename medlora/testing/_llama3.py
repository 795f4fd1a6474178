"""A tiny Llama-3-configured model with the real Llama 3 tokenizer, built offline.

The tokenizer comes from llama.cpp's vocabulary-only ``ggml-vocab-llama-bpe.gguf`` (in the
llama-cpp-python sdist, :func:`medlora.testing.llama_cpp_sdist`) through transformers' GGUF
loader. That loader rebuilds the vocabulary and merges but not all of Meta's
``tokenizer.json``: it drops ``ignore_merges`` and the BOS post-processor and appends a
128,257th token. :func:`llama3_tokenizer` puts Meta's behaviour back by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from medlora.testing._models import TINY, TinyLlamaSpec, save_random_llama

LLAMA3_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
"""Llama 3.1's ``rope_parameters`` (transformers 5 layout)."""

TINY_LLAMA3 = attrs.evolve(
    TINY,  # 2 layers, 4 query and 2 key/value heads
    hidden_size=64,
    intermediate_size=128,
    vocab_size=128256,
    max_position_embeddings=131072,
    initializer_range=0.1,
)
"""Llama 3's vocabulary and context on a 2-layer, width-64 body. head_dim 16 gives 8 rotary
frequencies, which under :data:`LLAMA3_ROPE` fall in all three bands (kept, interpolated,
divided); weights 5x larger than usual make attention depend on position, so wrong frequencies
show in the logits (measured on 512 tokens: max |diff| 0.003 with llama3 RoPE in llama.cpp,
0.57 without)."""

LLAMA3_BPE_VOCAB = "ggml-vocab-llama-bpe.gguf"
"""llama.cpp's Llama 3 vocabulary file, under ``vendor/llama.cpp/models`` of the sdist."""


def llama3_tokenizer(
    out_dir: str | Path, *, tokenizer_dir: str | Path, gguf_file: str, as_meta: bool = True
) -> Path:
    """Save the Llama 3 tokenizer held by a vocabulary-only GGUF as an HF tokenizer directory.

    Args:
        out_dir: Directory to write (``tokenizer.json``, ``tokenizer_config.json``).
        tokenizer_dir: The directory holding ``gguf_file``.
        gguf_file: E.g. :data:`LLAMA3_BPE_VOCAB`.
        as_meta: Restore Meta's ``tokenizer.json`` behaviour: ``ignore_merges`` (a word that
            is itself a token is not re-merged: ``"Việt"`` is one token), BOS
            ``<|begin_of_text|>`` added to every text, exactly 128,256 tokens. ``False`` keeps
            what transformers' GGUF loader builds.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), gguf_file=gguf_file)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer.save_pretrained(out)
    if as_meta:
        restore_meta_behaviour(out)
    return out


def restore_meta_behaviour(out: Path) -> None:
    """Give a Llama 3 tokenizer directory from transformers' GGUF loader the behaviour of
    Meta's ``tokenizer.json`` (see :func:`llama3_tokenizer`), in place."""
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    n_vocab = len(data["model"]["vocab"])
    data["model"]["ignore_merges"] = True
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < n_vocab]
    bos = next(t for t in data["added_tokens"] if t["content"] == "<|begin_of_text|>")
    first = {"SpecialToken": {"id": bos["content"], "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            first,
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos["content"], "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {
            bos["content"]: {"id": bos["content"], "ids": [bos["id"]], "tokens": [bos["content"]]}
        },
    }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder", {})
    config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < n_vocab}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def make_tiny_llama3(
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path,
    gguf_file: str | None = None,
    spec: TinyLlamaSpec = TINY_LLAMA3,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    rope_parameters: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny Llama-3-configured model (``rope_type: llama3``) with Llama 3's tokenizer.

    Args:
        out_dir: Target directory.
        tokenizer_dir: An HF tokenizer directory to copy, or with ``gguf_file`` the directory
            holding a vocabulary GGUF (:func:`llama3_tokenizer`, Meta's behaviour).
        gguf_file: The vocabulary GGUF in ``tokenizer_dir`` (:data:`LLAMA3_BPE_VOCAB`).
        spec: Model shape; its ``vocab_size`` above the tokenizer's size adds unused rows.
        seed: Seed for the weights.
        tie_word_embeddings: Share the input embedding with the output head (Llama 3.2 1B/3B).
        rope_parameters: :data:`LLAMA3_ROPE` by default.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if gguf_file is not None:
        llama3_tokenizer(out, tokenizer_dir=tokenizer_dir, gguf_file=gguf_file)
    else:
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    save_random_llama(
        out,
        spec,
        tokenizer=tokenizer,
        seed=seed,
        rope_parameters=dict(rope_parameters or LLAMA3_ROPE),
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return out
