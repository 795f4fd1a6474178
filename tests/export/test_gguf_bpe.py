"""Byte-level BPE vocabularies in GGUF: the pre-tokenizer read from tokenizer.json, proven by
llama.cpp tokenizing the hard check corpus exactly as the HF tokenizer does."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from medlora import ExportError

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

# Hyperparameters for vocabulary-only files (llama.cpp reads them before the vocabulary).
_VOCAB_ONLY_CONFIG = {
    "num_attention_heads": 4,
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "max_position_embeddings": 2048,
    "intermediate_size": 128,
}


def _vocab_gguf(tokenizer_dir: Path, out: Path, *, pre: str | None = None) -> Path:
    """The vocabulary-only GGUF :func:`write_gguf` checks, optionally with another ``pre``."""
    from medlora._hub import load_tokenizer
    from medlora.export._gguf import _write_vocab_only
    from medlora.export._gguf_rope import Rope
    from medlora.export._gguf_vocab import load_vocab

    vocab = load_vocab(tokenizer_dir, n_vocab=len(load_tokenizer(tokenizer_dir)))
    if pre is not None:
        vocab = dataclasses.replace(vocab, pre=pre)
    rope = Rope(theta=10000.0, kind="default")
    return _write_vocab_only(out, tokenizer_dir, _VOCAB_ONLY_CONFIG, rope, vocab, gguf)


def _pre(pre_tokenizer: dict[str, Any] | None, **model: Any) -> str:
    from medlora.export._gguf_bpe import pre_tokenizer_name

    data = {"normalizer": None, "pre_tokenizer": pre_tokenizer, "model": {"type": "BPE", **model}}
    return pre_tokenizer_name(data, Path("tokenizer.json"))


def _byte_level(use_regex: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "use_regex": use_regex, **extra}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(steps)}


def test_pre_tokenizer_is_read_from_the_tokenizer_structure() -> None:
    from medlora._pretokenize import LLAMA3_SPLIT, QWEN2_SPLIT

    digits = {"type": "Digits", "individual_digits": True}
    assert _pre(_byte_level()) == "gpt-2"
    assert _pre(_sequence(digits, _byte_level())) == "smollm"
    assert _pre(_sequence(_split(LLAMA3_SPLIT), _byte_level(False)), ignore_merges=True) == (
        "llama-bpe"
    )
    assert _pre(_sequence(_split(LLAMA3_SPLIT), _byte_level(False))) == "smaug-bpe"
    assert _pre(_sequence(_split(QWEN2_SPLIT), _byte_level(False))) == "qwen2"


@pytest.mark.parametrize(
    ("pre_tokenizer", "model", "named"),
    [
        ({"type": "Metaspace", "replacement": "▁"}, {}, "Metaspace"),
        (_byte_level(add_prefix_space=True), {}, "ByteLevel(add_prefix_space)"),
        (_sequence(_split(r"\w+|\s+"), _byte_level(False)), {}, r"Split('\\w+|\\s+', Isolated)"),
        (_byte_level(), {"ignore_merges": True}, "ByteLevel(regex), ignore_merges"),
        (None, {}, "pre-tokenizer none"),
        (_byte_level(), {"continuing_subword_prefix": "##"}, "continuing_subword_prefix='##'"),
    ],
)
def test_an_unsupported_pre_tokenizer_is_named(
    pre_tokenizer: dict[str, Any] | None, model: dict[str, Any], named: str
) -> None:
    with pytest.raises(ExportError) as raised:
        _pre(pre_tokenizer, **model)
    assert named in str(raised.value)


def test_a_normalizer_is_refused() -> None:
    from medlora.export._gguf_bpe import pre_tokenizer_name

    data = {"normalizer": {"type": "NFC"}, "pre_tokenizer": _byte_level(), "model": {}}
    with pytest.raises(ExportError, match="normalizer NFC cannot be exported"):
        pre_tokenizer_name(data, Path("tokenizer.json"))


def test_check_corpus_covers_the_hard_cases() -> None:
    from medlora.export._gguf_bpe import check_corpus

    rows = check_corpus()
    kinds = {kind for kind, _ in rows}
    assert {"numbers", "whitespace", "code", "accents", "cjk", "emoji", "clinical"} <= kinds
    assert {"contractions", "special-like", "whitespace+digits"} <= kinds
    texts = "\n".join(text for _, text in rows)
    for needle in ("1234567", "3.14159", "\t", "  ", "'ve", "'s", "<|im_start|>", "我", "🦙"):
        assert needle in texts
    assert len(rows) == 87


@pytest.fixture(scope="module")
def byte_level_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small byte-level BPE tokenizer per pre-tokenizer style, trained on the records."""
    from medlora.testing._models import _default_corpus
    from medlora.testing._tokenizer import BYTE_LEVEL_STYLES, train_byte_level_bpe

    root = tmp_path_factory.mktemp("byte-level")
    texts = _default_corpus()
    return {s: train_byte_level_bpe(texts, root / s, style=s) for s in BYTE_LEVEL_STYLES}


@pytest.mark.parametrize("style", ["gpt-2", "smollm", "llama-bpe", "smaug-bpe", "qwen2"])
def test_each_style_tokenizes_the_corpus_like_hf(
    style: str, byte_level_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from medlora._hub import load_tokenizer
    from medlora.export._gguf_bpe import check_tokenization

    directory = byte_level_dirs[style]
    path = _vocab_gguf(directory, tmp_path / "vocab.gguf")
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == style
    assert check_tokenization(path, load_tokenizer(directory)) == {"matching": 87, "total": 87}


def test_a_wrong_pre_tokenizer_fails_naming_the_first_line(
    byte_level_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from medlora._hub import load_tokenizer
    from medlora.export._gguf_bpe import check_tokenization

    directory = byte_level_dirs["gpt-2"]
    path = _vocab_gguf(directory, tmp_path / "vocab.gguf", pre="llama-bpe")
    with pytest.raises(ExportError, match=r"first line \d+ \(") as raised:
        check_tokenization(path, load_tokenizer(directory), what="pre-tokenizer 'llama-bpe'")
    message = str(raised.value)
    assert "with pre-tokenizer 'llama-bpe' tokenizes 22 of 87 check lines" in message
    assert raised.value.measurements == {"matching": 65, "total": 87}


@pytest.fixture(scope="module")
def byte_level_model(
    byte_level_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny Llama (seeded random weights) with the GPT-2-style tokenizer."""
    import attrs

    from medlora._hub import load_tokenizer
    from medlora.testing import TINY
    from medlora.testing._models import save_random_llama

    out = tmp_path_factory.mktemp("byte-level-llama")
    for item in byte_level_dirs["gpt-2"].iterdir():
        shutil.copy2(item, out / item.name)
    tokenizer = load_tokenizer(out)
    spec = attrs.evolve(TINY, vocab_size=len(tokenizer) + 8)  # 8 unused embedding rows
    return save_random_llama(
        out, spec, tokenizer=tokenizer, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True
    )


def test_byte_level_model_exports_and_matches_hf_logits(
    byte_level_model: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from medlora._hub import load_tokenizer
    from medlora.export import write_gguf
    from medlora.export._parity import compare, hf_logits, llama_cpp_logits

    path = write_gguf(byte_level_model, tmp_path / "model-F32.gguf", outtype="F32")
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokenizer = load_tokenizer(byte_level_model)
    data = json.loads((byte_level_model / "tokenizer.json").read_text())
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert "tokenizer.ggml.scores" not in fields
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) for m in data["model"]["merges"]]
    n_tokens = len(tokenizer)
    types = fields["tokenizer.ggml.token_type"]
    assert types[:3] == [3, 3, 3]  # the special added tokens are CONTROL
    assert set(types[3:n_tokens]) == {1} and set(types[n_tokens:]) == {5}  # NORMAL, UNUSED pad
    assert fields["tokenizer.ggml.tokens"][n_tokens] == f"[PAD{n_tokens}]"
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.ggml.add_bos_token"] is False  # as the HF tokenizer: no BOS added
    names = [t.name for t in reader.tensors]
    assert "token_embd.weight" in names and "output.weight" not in names  # tied

    ids = [tokenizer("Pt c/o SOB x3d, HR 112 bpm, BP 90/60 mmHg. " * 4)["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(byte_level_model, dtype=torch.float32).eval()
    agreement = compare(hf_logits(model, ids), llama_cpp_logits(path, ids))
    assert agreement.top1 == 1.0 and agreement.max_abs_logit_diff < 1e-3


def test_unsupported_tokenizer_fails_before_anything_is_written(
    byte_level_model: Path, tmp_path: Path
) -> None:
    from medlora.export import write_gguf
    from medlora.export._gguf import gguf_preflight

    model = Path(shutil.copytree(byte_level_model, tmp_path / "model"))
    path = model / "tokenizer.json"
    data = json.loads(path.read_text())
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="pre-tokenizer Metaspace is not one medlora can map"):
        gguf_preflight(model)
    with pytest.raises(ExportError, match="pre-tokenizer Metaspace"):
        write_gguf(model, out / "model.gguf")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(("which", "pre"), [("meta", "llama-bpe"), ("raw", "smaug-bpe")])
def test_llama3_vocabulary_tokenizes_the_corpus_like_hf(
    which: str, pre: str, llama3_tokenizers: dict[str, Path], tmp_path: Path
) -> None:
    """Meta's Llama 3 tokenizer.json (ignore_merges) -> llama-bpe; the one transformers
    rebuilds from llama.cpp's vocabulary (no ignore_merges) -> smaug-bpe: 87/87 both."""
    from medlora._hub import load_tokenizer
    from medlora.export._gguf_bpe import check_tokenization

    directory = llama3_tokenizers[which]
    path = _vocab_gguf(directory, tmp_path / "vocab.gguf")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == pre
    assert check_tokenization(path, load_tokenizer(directory)) == {"matching": 87, "total": 87}


@pytest.mark.real
def test_smollm2_tokenizes_the_corpus_like_hf(real_model_dir: Path, tmp_path: Path) -> None:
    """SmolLM2 splits digits one by one before byte-level splitting -> llama.cpp's smollm;
    the same tokenizer without its Digits step (what transformers' GGUF loader rebuilds) ->
    gpt-2. 87/87 lines identical both ways."""
    from medlora._hub import load_tokenizer
    from medlora.export._gguf_bpe import check_tokenization

    plain = tmp_path / "without-digits"
    plain.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(real_model_dir / name, plain / name)
    data = json.loads((plain / "tokenizer.json").read_text())
    steps = data["pre_tokenizer"]["pretokenizers"]
    assert steps[0] == {"type": "Digits", "individual_digits": True}
    data["pre_tokenizer"] = steps[1]
    (plain / "tokenizer.json").write_text(json.dumps(data))
    for directory, pre in ((real_model_dir, "smollm"), (plain, "gpt-2")):
        path = _vocab_gguf(directory, tmp_path / f"{pre}.gguf")
        assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == pre
        result = check_tokenization(path, load_tokenizer(directory))
        assert result == {"matching": 87, "total": 87}


def _test_vectors(models: Path, name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors (test-tokenizer-0's ``.inp``/``.out`` format)."""
    texts = (models / f"{name}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = (models / f"{name}.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(lines)
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, lines, strict=True)]


@pytest.mark.slow
def test_llama3_vocabulary_against_llama_cpp_test_vectors(
    llama3_tokenizers: dict[str, Path], sdist_dir: Path, tmp_path: Path
) -> None:
    """llama.cpp's own Llama 3 vectors (ids without BOS, special tokens not parsed): all 47
    match llama.cpp on our llama-bpe file and HF; on the smaug-bpe file (the tokenizer
    transformers rebuilds, without ignore_merges) 46/47, the odd one 'Cửa Việt', which HF
    tokenizes the same way."""
    from medlora._hub import load_tokenizer
    from medlora._llama_cpp import open_gguf
    from medlora.testing._sdist import VOCAB_MODELS

    vectors = _test_vectors(sdist_dir / VOCAB_MODELS, "ggml-vocab-llama-bpe.gguf")
    counts = {}
    for which in ("meta", "raw"):
        tokenizer = load_tokenizer(llama3_tokenizers[which])
        llm = open_gguf(
            _vocab_gguf(llama3_tokenizers[which], tmp_path / f"{which}.gguf"),
            n_ctx=64,
            vocab_only=True,
        )
        try:
            ours = [llm.tokenize(t.encode(), add_bos=False, special=False) for t, _ in vectors]
        finally:
            llm.close()
        hf = [tokenizer(t, add_special_tokens=False)["input_ids"] for t, _ in vectors]
        expected = [ids for _, ids in vectors]
        counts[which] = (
            sum(a == b for a, b in zip(ours, expected, strict=True)),
            sum(a == b for a, b in zip(ours, hf, strict=True)),
        )
        if which == "raw":
            odd = [t for (t, ids), got in zip(vectors, ours, strict=True) if got != ids]
            assert odd == ["Cửa Việt"]
    assert counts == {"meta": (47, 47), "raw": (46, 47)}
