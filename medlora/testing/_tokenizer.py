"""Offline SentencePiece tokenizers: trained on local text, or rebuilt from a GGUF vocabulary."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medlora._optional import require
from medlora._template import ZEPHYR_CHAT_TEMPLATE

# SentencePiece piece types, in the order of llama.cpp's token types 1..6.
_SPM_TYPES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}  # NORMAL UNKNOWN CONTROL USER_DEFINED UNUSED BYTE


def train_sentencepiece(
    texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 1024, seed: int = 0
) -> Path:
    """Train a Llama-style SentencePiece BPE tokenizer and save it as an HF tokenizer directory.

    The model matches TinyLlama's tokenizer settings: BPE with byte fallback, digits split,
    ``<unk>``/``<s>``/``</s>`` at ids 0/1/2, no pad piece, a dummy prefix and no whitespace
    normalisation. The directory holds ``tokenizer.model`` (as TinyLlama's does), a
    ``tokenizer_config.json`` and the Zephyr chat template.

    Args:
        texts: Training text, one document per item.
        out_dir: Directory to write (created if needed).
        vocab_size: Target pieces in the vocabulary, including 259 byte and special pieces;
            a small corpus may yield fewer.
        seed: Unused by BPE training (deterministic); kept so callers can pass one seed.
    """
    spm = require("sentencepiece", "Training a tokenizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        max_sentence_length=1 << 16,
        num_threads=1,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    _write_tokenizer_config(out)
    return out


def tokenizer_from_gguf_vocab(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Rebuild the exact SentencePiece model stored as a vocabulary in a GGUF file.

    Used with llama.cpp's ``ggml-vocab-llama-spm.gguf`` this gives TinyLlama's own 32,000-token
    tokenizer offline.
    """
    gguf = require("gguf", "Reading a GGUF vocabulary")
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = gguf.GGUFReader(str(gguf_path))

    def field(name: str) -> list[object]:
        f = reader.fields[name]
        return [f.contents(i) for i in range(len(f.data))]

    tokens = field("tokenizer.ggml.tokens")
    scores = field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    proto = pb.ModelProto()
    for tok, score, typ in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece = str(tok)
        piece.score = float(score)  # type: ignore[arg-type]
        piece.type = _SPM_TYPES[int(typ)]  # type: ignore[call-overload]
    ts = proto.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    _write_tokenizer_config(out)
    return out


def _write_tokenizer_config(out: Path) -> None:
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": "right",
        "model_max_length": 2048,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(ZEPHYR_CHAT_TEMPLATE)


BYTE_LEVEL_STYLES = ("gpt-2", "smollm", "llama-bpe", "smaug-bpe", "qwen2")
"""Pre-tokenizer styles :func:`train_byte_level_bpe` builds, by llama.cpp's name for each."""


def train_byte_level_bpe(
    texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 1024, style: str = "gpt-2"
) -> Path:
    """Train a byte-level BPE tokenizer (GPT-2 style) and save it as an HF tokenizer directory.

    Args:
        texts: Training text, one document per item.
        out_dir: Directory to write (``tokenizer.json``, ``tokenizer_config.json``, the Zephyr
            chat template).
        vocab_size: Target vocabulary size, including 256 byte tokens and 3 special tokens
            (``<|endoftext|>`` 0, ``<|im_start|>`` 1 as BOS, ``<|im_end|>`` 2 as EOS).
        style: How text is split before the merges, one of :data:`BYTE_LEVEL_STYLES`: GPT-2's
            regex; single digits first (SmolLM); Llama 3's split pattern with or without
            ``ignore_merges``; Qwen2's pattern (single digits).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from medlora._pretokenize import LLAMA3_SPLIT, QWEN2_SPLIT

    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False)  # with its GPT-2 regex
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    styles: dict[str, list[Any]] = {
        "gpt-2": [gpt2],
        "smollm": [pre_tokenizers.Digits(individual_digits=True), gpt2],
        "llama-bpe": [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level],
        "smaug-bpe": [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level],
        "qwen2": [pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"), byte_level],
    }
    steps = styles[style]
    tokenizer = Tokenizer(models.BPE(ignore_merges=style == "llama-bpe"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    out = Path(out_dir)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        chat_template=ZEPHYR_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(out)
    return out
