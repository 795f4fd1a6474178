"""GGUF export: metadata, tokenizer and logits parity with the HF model, atomic writes.

Measured on the tiny model (2 layers, width 256, random init std 0.02, 2-core CPU), llama.cpp
against HF over all 2,100 positions of the 24 chat probes: max |logit diff| F32 4.3e-4,
F16 1.2e-3, Q8_0 2.9e-2; top-1 agreement F32 1.000, F16 0.998 (last position 24/24),
Q8_0 0.980 (last position 23/24), Q4_K_M 0.68. The random model's logits are nearly flat (std
0.32; smallest top-1/top-2 gap at the last position 6.9e-3, still 5x the F16 error); a larger
init (0.05, 0.1) made the quantized files agree *less*, so the default spec is kept.
transformers' GGUF loader reproduces the logits from the F32 file exactly (0.0).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medlora._errors import ConfigError, ExportError
from medlora.export._gguf import quantize_gguf, write_gguf
from medlora.export._gguf_vocab import gguf_tokenizer_report

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

SYSTEM = "You are a careful clinical assistant. Answer concisely."
PROBES = [
    "A 54-year-old man presents with crushing chest pain radiating to the left arm. Next step?",
    "Summarize: 67F with type 2 diabetes on metformin 500 mg BID, HbA1c 8.1%, eGFR 52.",
    "What are the red-flag symptoms of headache that warrant urgent imaging?",
    "Patient reports a penicillin allergy with hives. Which antibiotic for strep throat?",
    "Explain the CURB-65 score for community-acquired pneumonia.",
    "Draft discharge instructions after laparoscopic cholecystectomy.",
    "BP 168/102 mmHg on two visits, no end-organ damage. First-line therapy?",
    "List common side effects of lisinopril.",
    "A 3-year-old has a barking cough and inspiratory stridor at night. Likely diagnosis?",
    "Convert this to a SOAP note: fever 38.9 C, productive cough for 4 days, crackles right base.",
    "When should a patient on warfarin have their INR checked after a dose change?",
    "What does a troponin of 0.8 ng/mL mean in a patient with chest pain?",
    "Give the Wells criteria for pulmonary embolism.",
    "Is it safe to take ibuprofen during the third trimester of pregnancy?",
    "Interpret: Na 128 mmol/L, serum osmolality 260 mOsm/kg, urine osmolality 450.",
    "What is the initial management of diabetic ketoacidosis?",
    "Describe the signs of sepsis in an elderly nursing-home resident.",
    "How is iron-deficiency anaemia treated in adults?",
    "Write a referral letter to cardiology for new-onset atrial fibrillation.",
    "A 25-year-old with polyuria, polydipsia and weight loss: which tests first?",
    "Explain the difference between type 1 and type 2 myocardial infarction.",
    "Which vaccines are recommended for adults over 65?",
    "Patient asks whether to stop statins because of muscle aches. Advice?",
    "What are contraindications to thrombolysis in acute ischaemic stroke?",
]


def _llama(path: Path, **kwargs: Any) -> Any:
    """Load a GGUF file in llama.cpp the way medlora does (CPU-safe buffers)."""
    from medlora.export import open_gguf

    return open_gguf(path, n_ctx=256, n_threads=2, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def probe_texts(tokenizer: Any) -> list[str]:
    from medlora.data import render

    return [
        render(
            tokenizer,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
            generation_prompt=True,
        )
        for p in PROBES
    ]


@pytest.fixture(scope="module")
def probe_ids(tokenizer: Any, probe_texts: list[str]) -> list[list[int]]:
    return [tokenizer(t).input_ids for t in probe_texts]


@pytest.fixture(scope="module")
def hf_logits(tiny_model_dir: Path, probe_ids: list[list[int]]) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].numpy() for ids in probe_ids]  # (seq, vocab)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("gguf")
    meta = {"general.license": "apache-2.0", "general.base_model": "medlora/tiny-llama"}
    for outtype in ("F32", "F16", "Q8_0"):
        write_gguf(tiny_model_dir, out / f"tiny-{outtype}.gguf", outtype=outtype, metadata=meta)
    quantize_gguf(out / "tiny-F16.gguf", out / "tiny-Q4_K_M.gguf", "Q4_K_M", threads=2)
    return out


def _llama_logits(path: Path, probe_ids: list[list[int]]) -> list[np.ndarray]:
    llm = _llama(path, logits_all=True)
    try:
        out = []
        for ids in probe_ids:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_metadata_reads_back(gguf_dir: Path, tiny_model_dir: Path) -> None:
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    reader = gguf.GGUFReader(str(gguf_dir / "tiny-F16.gguf"))
    fields = _fields(gguf_dir / "tiny-F16.gguf")
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "model"
    assert fields["llama.attention.key_length"] == fields["llama.attention.value_length"] == 64
    assert fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count"] == 4
    assert fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.dimension_count"] == 64
    assert fields["llama.embedding_length"] == 256
    assert fields["llama.vocab_size"] == config["vocab_size"] == 1024
    assert len(fields["tokenizer.ggml.tokens"]) == 1024  # padded up to the embedding rows
    assert fields["tokenizer.ggml.bos_token_id"] == 1
    assert fields["tokenizer.ggml.eos_token_id"] == 2
    assert "<|assistant|>" in fields["tokenizer.chat_template"]
    assert "tokenizer.ggml.add_space_prefix" not in fields  # add_prefix_space is null
    assert fields["general.file_type"] == 1
    assert fields["general.base_model.0.name"] == "medlora/tiny-llama"
    assert fields["general.license"] == "apache-2.0"
    assert "medlora.version" in fields
    names = {t.name: t for t in reader.tensors}
    assert len(names) == 2 + 1 + 2 * 9  # embd, output_norm, output + 9 per layer
    assert {"token_embd.weight", "output.weight", "blk.1.attn_q.weight"} <= set(names)
    for name, t in names.items():
        want = "F32" if name.endswith("norm.weight") else "F16"
        assert t.tensor_type.name == want, name
    q8 = {
        t.name: t.tensor_type.name
        for t in gguf.GGUFReader(str(gguf_dir / "tiny-Q8_0.gguf")).tensors
    }
    assert q8["blk.0.ffn_down.weight"] == "Q8_0" and q8["blk.0.ffn_norm.weight"] == "F32"
    report = gguf_tokenizer_report(gguf_dir / "tiny-F16.gguf")
    assert report["n_tokens"] == 1024 and report["has_chat_template"] and report["add_bos"]


def test_transformers_reads_f32_back_exactly(
    gguf_dir: Path, probe_ids: list[list[int]], hf_logits: list[np.ndarray]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="tiny-F32.gguf").eval()
    with torch.no_grad():
        diff = max(
            float(np.abs(model(torch.tensor([ids])).logits[0].numpy() - ref).max())
            for ids, ref in zip(probe_ids[:5], hf_logits[:5], strict=True)
        )
    assert diff < 1e-4  # measured 0.0: the Q/K permutation round-trips exactly


@pytest.mark.parametrize(("outtype", "tolerance"), [("F32", 1e-2), ("F16", 5e-2)])
def test_llama_cpp_logits_match_hf(
    gguf_dir: Path,
    probe_ids: list[list[int]],
    hf_logits: list[np.ndarray],
    outtype: str,
    tolerance: float,
) -> None:
    got = _llama_logits(gguf_dir / f"tiny-{outtype}.gguf", probe_ids)
    diff = max(float(np.abs(g - h).max()) for g, h in zip(got, hf_logits, strict=True))
    last_agree = [
        int(g[-1].argmax() == h[-1].argmax()) for g, h in zip(got, hf_logits, strict=True)
    ]
    assert len(last_agree) >= 20
    assert diff < tolerance, f"max |logit diff| {diff:.2e}"  # pretrained tiny model: F32 3.1e-3
    assert sum(last_agree) == len(last_agree)


def test_q8_0_and_q4_k_m_agree_and_generate(
    gguf_dir: Path, probe_ids: list[list[int]], hf_logits: list[np.ndarray]
) -> None:
    got = _llama_logits(gguf_dir / "tiny-Q8_0.gguf", probe_ids)
    pairs = zip(got, hf_logits, strict=True)
    agree = np.mean(np.concatenate([g.argmax(-1) == h.argmax(-1) for g, h in pairs]))
    assert agree >= 0.95  # every position of every probe: measured 0.980
    for name in ("tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf"):
        llm = _llama(gguf_dir / name)
        try:
            out = llm.create_completion("Patient presents with", max_tokens=4, temperature=0.0)
            assert out["usage"]["completion_tokens"] >= 1
        finally:
            llm.close()
    q4 = {t.tensor_type.name for t in gguf.GGUFReader(str(gguf_dir / "tiny-Q4_K_M.gguf")).tensors}
    assert "Q4_K" in q4
    assert (gguf_dir / "tiny-Q4_K_M.gguf").stat().st_size < (
        gguf_dir / "tiny-Q8_0.gguf"
    ).stat().st_size


def test_llama_cpp_tokenizes_like_hf(
    gguf_dir: Path, tiny_model_dir: Path, tokenizer: Any, probe_texts: list[str]
) -> None:
    from transformers import AutoTokenizer

    llm = _llama(gguf_dir / "tiny-F16.gguf", vocab_only=True)
    try:
        for text in PROBES:  # plain text: identical with the tokenizer as saved
            assert (
                llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text).input_ids
            )
        # Chat text: llama.cpp puts a space piece after every special token (SentencePiece's
        # "legacy" behaviour); transformers does the same only with legacy=True.
        legacy = AutoTokenizer.from_pretrained(tiny_model_dir, legacy=True)
        for text in probe_texts:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == legacy(text).input_ids
    finally:
        llm.close()


def test_hf_chat_tokenization_matches_llama_cpp(
    gguf_dir: Path, tokenizer: Any, probe_texts: list[str]
) -> None:
    llm = _llama(gguf_dir / "tiny-F16.gguf", vocab_only=True)
    try:
        # medlora writes "legacy": true into every tokenizer_config.json it makes, so a plain
        # AutoTokenizer load tokenizes chat text (a '▁' after each mid-text '</s>') as llama.cpp.
        for text in probe_texts:
            got = llm.tokenize(text.encode(), add_bos=True, special=True)
            assert got == tokenizer(text).input_ids
    finally:
        llm.close()


def test_tokenizer_json_only_fallback(
    tmp_path: Path, tiny_model_dir: Path, gguf_dir: Path, tokenizer: Any
) -> None:
    model_dir = tmp_path / "no-spm"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "tokenizer.model").unlink()
    out = write_gguf(model_dir, tmp_path / "fallback.gguf")
    fields, ref = _fields(out), _fields(gguf_dir / "tiny-F16.gguf")
    assert fields["tokenizer.ggml.tokens"] == ref["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.token_type"] == ref["tokenizer.ggml.token_type"]
    llm = _llama(out, vocab_only=True)
    try:
        for text in PROBES:
            assert (
                llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text).input_ids
            )
    finally:
        llm.close()


def test_sharded_bf16_checkpoint(tmp_path: Path, tiny_model_dir: Path, gguf_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model.save_pretrained(model_dir, max_shard_size="1MB")
    for item in tiny_model_dir.glob("tokenizer*"):
        shutil.copy2(item, model_dir / item.name)
    assert (model_dir / "model.safetensors.index.json").is_file()
    out = write_gguf(model_dir, tmp_path / "sharded.gguf", outtype="F32")
    got = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(out)).tensors}
    ref = {
        t.name: np.array(t.data) for t in gguf.GGUFReader(str(gguf_dir / "tiny-F32.gguf")).tensors
    }
    assert got.keys() == ref.keys()
    for name, data in ref.items():  # same tensors, rounded to bf16 and back
        rounded = torch.from_numpy(data).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(got[name], rounded, err_msg=name)


def test_failure_mid_write_leaves_previous_file(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medlora.export._gguf as module

    target = tmp_path / "model.gguf"
    target.write_bytes(b"previous export")
    real, calls = module._convert, []

    def failing(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(module, "_convert", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(tiny_model_dir, target)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temp file left
    calls.clear()
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(tiny_model_dir, tmp_path / "fresh.gguf")
    assert not (tmp_path / "fresh.gguf").exists()


def test_non_llama_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"architectures": ["MistralForCausalLM"], "model_type": "mistral"}'
    )
    with pytest.raises(ExportError, match="MistralForCausalLM") as info:
        write_gguf(tmp_path, tmp_path / "out.gguf")
    assert "Llama" in str(info.value)
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_types_name_valid_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'Q8_0'"):
        write_gguf(tiny_model_dir, tmp_path / "x.gguf", outtype="q8")
    with pytest.raises(ConfigError, match="quantize_gguf"):
        write_gguf(tiny_model_dir, tmp_path / "x.gguf", outtype="Q4_K_M")
    with pytest.raises(ConfigError, match="Q4_K_M"):
        quantize_gguf(tmp_path / "x.gguf", tmp_path / "y.gguf", "Q4_KM")


@pytest.fixture()
def llama_spm_dir(tmp_path: Path, shared_dir: Path) -> Iterator[tuple[Path, Path]]:
    from medlora.testing import TinyLlamaSpec, make_tiny_llama, tokenizer_from_gguf_vocab

    vocab = shared_dir / "data/llama-spm-vocab/ggml-vocab-llama-spm.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is missing")
    tok_dir = tokenizer_from_gguf_vocab(vocab, tmp_path / "tok")
    spec = TinyLlamaSpec(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    yield make_tiny_llama(tmp_path / "model", spec=spec, tokenizer_dir=tok_dir), vocab


def test_real_llama_vocabulary_round_trips(
    tmp_path: Path, llama_spm_dir: tuple[Path, Path]
) -> None:
    model_dir, vocab = llama_spm_dir
    fields = _fields(write_gguf(model_dir, tmp_path / "spm.gguf"))
    ref = _fields(vocab)
    assert len(fields["tokenizer.ggml.tokens"]) == 32000
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert fields[key] == ref[key], key
