"""Llama models built in-process: a tiny one for tests and a TinyLlama-shaped one for benchmarks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from medlora._hub import load_tokenizer, mark_llama_cpp_compatible
from medlora.testing._tokenizer import train_sentencepiece


@attrs.frozen(kw_only=True)
class TinyLlamaSpec:
    """Shape of a Llama model built from scratch (random weights)."""

    hidden_size: int = 256
    """Width of the residual stream (multiple of 256 keeps every llama.cpp K-quant usable)."""
    intermediate_size: int = 512
    """Width of the SwiGLU MLP."""
    num_hidden_layers: int = 2
    """Decoder layers."""
    num_attention_heads: int = 4
    """Query heads (head_dim = hidden_size / heads)."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention, as TinyLlama)."""
    vocab_size: int = 1024
    """Tokenizer and embedding size; a trained tokenizer has exactly this many pieces."""
    max_position_embeddings: int = 2048
    """Longest context."""
    initializer_range: float = 0.02
    """Std of the random initial weights."""


TINY = TinyLlamaSpec()
"""The spec of :func:`make_tiny_llama`: 2 layers, width 256, 1,024-token vocabulary."""

TINYLLAMA_1B = TinyLlamaSpec(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
)
"""TinyLlama-1.1B's exact shapes (FACTS: hidden 2048, 22 layers, 32 heads, 4 KV heads)."""


def _synthetic_messages() -> list[dict[str, str]]:
    """Every message of the embedded synthetic records, in file order (as shipped, before
    validation adds anything)."""
    from medlora.data import ClinicalDataset

    return [m for r in ClinicalDataset.default() for m in r.source["messages"]]


def _default_corpus() -> list[str]:
    texts = [message["content"] for message in _synthetic_messages()]
    # The chat template's markers, so they tokenize compactly.
    texts += ["<|system|>", "<|user|>", "<|assistant|>"] * 20
    return texts


def _user_texts() -> list[str]:
    return [m["content"] for m in _synthetic_messages() if m["role"] == "user"]


def make_tiny_llama(
    out_dir: str | Path,
    *,
    spec: TinyLlamaSpec = TINY,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    tokenizer_dir: str | Path | None = None,
    pretrain_steps: int = 0,
) -> Path:
    """Write a small Llama model and its tokenizer as an HF model directory.

    The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and with
    every medlora entry point, exactly like a downloaded TinyLlama directory would.

    Args:
        out_dir: Where to write ``config.json``, ``model.safetensors``, the tokenizer files
            (including ``tokenizer.model``) and ``generation_config.json``.
        spec: Model shape; :data:`TINY` by default, :data:`TINYLLAMA_1B` for benchmarks.
        seed: Seed for the weights and the tokenizer training.
        corpus: Text to train the tokenizer on; the embedded synthetic clinical records by
            default.
        tokenizer_dir: Use this tokenizer directory instead of training one (its vocabulary
            must not exceed ``spec.vocab_size``).
        pretrain_steps: Steps of plain language-model pre-training on the user side of the
            embedded records (the notes and questions, never the answers), so the base knows
            clinical words but not the assistant's replies: what fine-tuning then teaches.
            0 keeps the random weights.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        texts = list(corpus) if corpus is not None else _default_corpus()
        train_sentencepiece(texts, out, vocab_size=min(spec.vocab_size, 4096), seed=seed)
    else:
        for item in Path(tokenizer_dir).iterdir():
            if item.is_file() and item.name.startswith(("tokenizer", "special_tokens", "chat_")):
                shutil.copy2(item, out / item.name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.save_pretrained(out)  # adds tokenizer.json; tokenizer.model stays beside it
    mark_llama_cpp_compatible(out)  # save_pretrained drops "legacy"; medlora trains with it
    tokenizer = load_tokenizer(out)
    return save_random_llama(
        out, spec, tokenizer=tokenizer, seed=seed, pretrain_steps=pretrain_steps
    )


def save_random_llama(
    out: Path,
    spec: TinyLlamaSpec,
    *,
    tokenizer: Any,
    seed: int = 0,
    pretrain_steps: int = 0,
    **config: Any,
) -> Path:
    """Build a ``spec``-shaped Llama with seeded random weights and save it beside the tokenizer
    already in ``out``; ``config`` overrides ``LlamaConfig`` fields (``rope_parameters``,
    ``tie_word_embeddings``, token ids)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if len(tokenizer) > spec.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but spec.vocab_size is {spec.vocab_size}"
        )
    settings: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": spec.initializer_range,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if "rope_parameters" in config:  # it carries its own rope_theta
        del settings["rope_theta"]
    settings.update(config)
    llama_config = LlamaConfig(**settings)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config)
    if pretrain_steps:
        from medlora.testing._pretrain import pretrain

        pretrain(model, tokenizer, _user_texts(), steps=pretrain_steps, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=settings["bos_token_id"],
        eos_token_id=settings["eos_token_id"],
        max_new_tokens=64,
    ).save_pretrained(out)
    (out / "medlora-testing.json").write_text(
        json.dumps({"spec": attrs.asdict(spec), "seed": seed}, indent=2) + "\n"
    )
    return out


def make_tinyllama_shaped(
    out_dir: str | Path,
    *,
    num_hidden_layers: int = 22,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a model with TinyLlama-1.1B's exact shapes and random weights (for benchmarks).

    Args:
        out_dir: Target directory.
        num_hidden_layers: 22 for the full model; fewer for a quicker reference.
        seed: Seed for the weights.
        tokenizer_dir: A 32,000-token Llama tokenizer (see :func:`tokenizer_from_gguf_vocab`);
            without one, a small tokenizer is trained on the embedded corpus and the embedding
            keeps 32,000 rows.
    """
    spec = attrs.evolve(TINYLLAMA_1B, num_hidden_layers=num_hidden_layers)
    return make_tiny_llama(out_dir, spec=spec, seed=seed, tokenizer_dir=tokenizer_dir)
