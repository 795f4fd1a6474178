"""RoPE variants in GGUF: default and linear keys, llama3's rope_freqs tensor, typed refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medlora import ExportError

gguf = pytest.importorskip("gguf")

_LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def test_rope_is_read_from_transformers_5_and_legacy_configs() -> None:
    from medlora.export._gguf_rope import Rope, read_rope

    expected = Rope(theta=500000.0, kind="llama3", factor=8.0, original_context=8192)
    assert read_rope({"rope_parameters": {**_LLAMA3, "rope_theta": 500000.0}}) == expected
    legacy = {"rope_theta": 500000.0, "rope_scaling": _LLAMA3}  # transformers 4.x config.json
    assert read_rope(legacy) == expected
    older = {"rope_scaling": {"type": "linear", "factor": 4.0}}
    assert read_rope(older) == Rope(theta=10000.0, kind="linear", factor=4.0)
    assert read_rope({}) == Rope(theta=10000.0, kind="default")
    nested = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    assert read_rope(nested) == Rope(theta=1e6, kind="default")


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope", "su", "proportional"])
def test_unsupported_rope_types_are_named(kind: str) -> None:
    from medlora.export._gguf_rope import read_rope

    with pytest.raises(ExportError, match=f"RoPE scaling '{kind}' cannot be exported"):
        read_rope({"rope_parameters": {"rope_type": kind, "factor": 4.0, "rope_theta": 1e4}})


def test_llama3_without_its_parameters_is_refused() -> None:
    from medlora.export._gguf_rope import read_rope

    with pytest.raises(ExportError, match="lacks low_freq_factor, high_freq_factor"):
        read_rope({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}})


def _divisors(theta: float, head_dim: int, p: dict[str, Any]) -> list[float]:
    """The llama3 frequency divisors in float64, from the formula as published."""
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    context, factor = p["original_max_position_embeddings"], p["factor"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


@pytest.mark.parametrize(("theta", "head_dim"), [(500000.0, 16), (500000.0, 64), (1e4, 128)])
def test_rope_freqs_follow_the_llama3_formula(theta: float, head_dim: int) -> None:
    from medlora.export._gguf_rope import read_rope, rope_freqs

    rope = read_rope({"rope_parameters": {**_LLAMA3, "rope_theta": theta}})
    freqs = rope_freqs(rope, head_dim)
    assert freqs is not None and freqs.dtype == np.float32 and freqs.shape == (head_dim // 2,)
    np.testing.assert_allclose(freqs, _divisors(theta, head_dim, _LLAMA3), rtol=1e-6)
    assert freqs[0] == 1.0 and freqs[-1] == 8.0  # kept and divided bands
    assert rope_freqs(read_rope({}), head_dim) is None


def _with_rope(model: Path, tmp_path: Path, rope: dict[str, Any]) -> Path:
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    config = json.loads((copy / "config.json").read_text())
    config.pop("rope_theta", None)
    config["rope_parameters"] = rope
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_yarn_fails_before_anything_is_written(random_model_dir: Path, tmp_path: Path) -> None:
    from medlora.export import write_gguf
    from medlora.export._gguf import gguf_preflight

    rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    model = _with_rope(random_model_dir, tmp_path, rope)
    with pytest.raises(ExportError, match="'yarn'"):
        gguf_preflight(model)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="RoPE scaling 'yarn' cannot be exported to GGUF"):
        write_gguf(model, out / "model.gguf")
    assert not out.exists() or not any(out.iterdir())


def test_linear_rope_writes_its_keys(random_model_dir: Path, tmp_path: Path) -> None:
    from medlora.export import write_gguf

    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    model = _with_rope(random_model_dir, tmp_path, rope)
    reader = gguf.GGUFReader(str(write_gguf(model, tmp_path / "m.gguf", outtype="F32")))
    assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
    assert reader.fields["llama.rope.scaling.factor"].contents() == 2.0
    assert "rope_freqs.weight" not in [t.name for t in reader.tensors]


def _agreement(model_dir: Path, path: Path, n_tokens: int = 512) -> Any:
    """HF (float32) against llama.cpp on ``n_tokens`` of clinical text (an ``Agreement``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from medlora._hub import load_tokenizer
    from medlora.data._synthetic import generate_records
    from medlora.export._parity import compare, hf_logits, llama_cpp_logits

    text = " ".join(m["content"] for r in generate_records() for m in r["messages"])
    ids = [load_tokenizer(model_dir)(text)["input_ids"][:n_tokens]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return compare(hf_logits(model, ids), llama_cpp_logits(path, ids))


@pytest.mark.slow
def test_llama3_rope_gguf_matches_hf_logits(tiny_llama3_dir: Path, tmp_path: Path) -> None:
    """rope_freqs is what makes llama.cpp follow HF over 512 positions: with it F32 agrees
    on every top-1 (max |diff| 0.003 measured) and F16 on every top-1 but one near-tie (1 of
    512 raw); with the tensor set to ones the logits part (max |diff| 0.57)."""
    from medlora.export import write_gguf

    f32 = write_gguf(tiny_llama3_dir, tmp_path / "m-F32.gguf", outtype="F32")
    freqs = next(t for t in gguf.GGUFReader(str(f32)).tensors if t.name == "rope_freqs.weight")
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32 and list(freqs.shape) == [8]
    f32_agreement = _agreement(tiny_llama3_dir, f32)
    assert f32_agreement.top1 == 1.0 and f32_agreement.max_abs_logit_diff < 0.01

    f16 = write_gguf(tiny_llama3_dir, tmp_path / "m-F16.gguf", outtype="F16")
    f16_agreement = _agreement(tiny_llama3_dir, f16)  # F16 rounding flips near-ties only
    assert f16_agreement.top1_within_tie == 1.0 and f16_agreement.max_abs_logit_diff < 0.05

    plain = Path(shutil.copy(f32, tmp_path / "ones.gguf"))
    reader = gguf.GGUFReader(str(plain), "r+")
    next(t for t in reader.tensors if t.name == "rope_freqs.weight").data[:] = 1.0
    reader.data.flush()
    del reader
    assert _agreement(tiny_llama3_dir, plain).max_abs_logit_diff > 0.1


@pytest.mark.slow
def test_tied_llama3_writes_the_embedding_once(
    llama3_tokenizers: dict[str, Path], tmp_path: Path
) -> None:
    from medlora.export import write_gguf
    from medlora.testing import make_tiny_llama3

    model = make_tiny_llama3(
        tmp_path / "tied", tokenizer_dir=llama3_tokenizers["meta"], tie_word_embeddings=True
    )
    path = write_gguf(model, tmp_path / "tied-F32.gguf", outtype="F32")
    names = [t.name for t in gguf.GGUFReader(str(path)).tensors]
    assert names.count("token_embd.weight") == 1 and "output.weight" not in names
    agreement = _agreement(model, path)
    assert agreement.top1 == 1.0 and agreement.max_abs_logit_diff < 0.01
