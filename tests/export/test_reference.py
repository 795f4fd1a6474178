"""medlora's GGUF writer against llama.cpp's own ``convert_hf_to_gguf.py`` (reference tests).

Each model is converted to F16 by both; every tensor must be byte-identical (same names, order,
types and shapes), and every metadata key equal except the ones listed, each with its reason.

* A TinyLlama-shaped model (exact TinyLlama-1.1B shapes but 2 layers, random weights) with the
  real 32,000-token Llama SentencePiece vocabulary. Measured here (2 cores): model build ~60 s,
  llama.cpp's converter 13 s, medlora 9 s; 21/21 tensors identical.
* A tiny Llama-3-configured model (llama3 RoPE: llama.cpp's ``rope_freqs.weight``) with Meta's
  Llama 3 byte-level BPE vocabulary: 22/22 tensors identical, ``rope_freqs`` included.
* The real SmolLM2-135M-Instruct (30 layers, tied embeddings, byte-level BPE): 272/272 tensors.

The converter comes from the llama-cpp-python sdist of the installed version (it vendors
llama.cpp; :func:`medlora.testing.llama_cpp_sdist` downloads it once into the medlora cache),
and the tests skip with a reason when the registry is unavailable.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

EXPECTED_DIFFERENCES: dict[str, str] = {
    "general.name": "llama.cpp title-cases the directory name ('Model'); medlora uses the export "
    "name as given ('model' here, the user's name in an export)",
    "general.size_label": "llama.cpp derives a parameter-count label ('219M') from the weights; "
    "medlora does not guess it (the card states the base model instead)",
    "medlora.version": "medlora records the version that wrote the file; llama.cpp has no such key",
}
"""Metadata keys allowed to differ, and why. Everything else must be equal."""

SMOLLM2_DIFFERENCES: dict[str, str] = {
    **EXPECTED_DIFFERENCES,
    "general.basename": "llama.cpp parses 'SmolLM2' out of the directory name; medlora does not "
    "guess names from paths",
    "general.finetune": "llama.cpp parses 'Instruct' out of the directory name (as above)",
}
"""SmolLM2: the common differences and the metadata llama.cpp guesses from the path."""


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _llama_cpp_convert(sdist: Path, model: Path, out: Path) -> float:
    """Run llama.cpp's converter to F16 with its own gguf-py; returns the seconds it took."""
    from medlora.testing._sdist import CONVERTER, LLAMA_CPP

    env = {"PYTHONPATH": str(sdist / LLAMA_CPP / "gguf-py"), "PATH": "/usr/bin:/bin"}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, str(sdist / CONVERTER), str(model), "--outtype", "f16"]
    start = time.perf_counter()
    subprocess.run(
        [*command, "--outfile", str(out)],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    return time.perf_counter() - start


def _assert_same_file(
    ours: Path, theirs: Path, allowed: dict[str, str]
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Every tensor byte-identical; metadata equal but for ``allowed``. Returns the number
    of tensors and both files' metadata."""
    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x.tensor_type == y.tensor_type, x.name
        assert list(x.shape) == list(y.shape), x.name
        assert np.array_equal(np.asarray(x.data), np.asarray(y.data)), x.name
    fa, fb = _fields(ours), _fields(theirs)
    differing = {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}
    assert differing == set(allowed), {k: (fa.get(k), fb.get(k)) for k in differing ^ set(allowed)}
    return len(a.tensors), fa, fb


@pytest.mark.slow
def test_f16_is_tensor_identical_to_llama_cpp_converter(tmp_path: Path, sdist_dir: Path) -> None:
    from medlora.export import write_gguf
    from medlora.testing import make_tinyllama_shaped, tokenizer_from_gguf_vocab
    from medlora.testing._sdist import VOCAB_MODELS

    vocab = sdist_dir / VOCAB_MODELS / "ggml-vocab-llama-spm.gguf"
    tok = tokenizer_from_gguf_vocab(vocab, tmp_path / "tok")
    model = make_tinyllama_shaped(tmp_path / "model", num_hidden_layers=2, tokenizer_dir=tok)

    ours = write_gguf(model, tmp_path / "medlora-F16.gguf", outtype="F16")
    theirs = tmp_path / "llama-cpp-F16.gguf"
    _llama_cpp_convert(sdist_dir, model, theirs)

    n_tensors, fields, _ = _assert_same_file(ours, theirs, EXPECTED_DIFFERENCES)
    assert n_tensors == 2 * 9 + 3
    assert len(fields["tokenizer.ggml.tokens"]) == 32000


@pytest.mark.slow
def test_llama3_rope_and_bpe_vocab_match_llama_cpp_converter(
    tmp_path: Path, sdist_dir: Path, tiny_llama3_dir: Path
) -> None:
    from medlora.export import write_gguf

    ours = write_gguf(tiny_llama3_dir, tmp_path / "medlora-F16.gguf", outtype="F16")
    theirs = tmp_path / "llama-cpp-F16.gguf"
    _llama_cpp_convert(sdist_dir, tiny_llama3_dir, theirs)

    n_tensors, fields, _ = _assert_same_file(ours, theirs, EXPECTED_DIFFERENCES)
    assert n_tensors == 1 + 2 * 9 + 3
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert len(fields["tokenizer.ggml.merges"]) == 280147
    assert gguf.GGUFReader(str(ours)).tensors[0].name == "rope_freqs.weight"


@pytest.mark.real
def test_smollm2_is_tensor_identical_to_llama_cpp_converter(
    tmp_path: Path, sdist_dir: Path, real_model_dir: Path
) -> None:
    from medlora._hub import load_tokenizer
    from medlora.export import write_gguf
    from medlora.export._gguf_bpe import check_tokenization

    start = time.perf_counter()
    ours = write_gguf(real_model_dir, tmp_path / "medlora-F16.gguf", outtype="F16")
    medlora_s = time.perf_counter() - start
    theirs = tmp_path / "llama-cpp-F16.gguf"
    llama_cpp_s = _llama_cpp_convert(sdist_dir, real_model_dir, theirs)
    print(f"SmolLM2 F16: medlora {medlora_s:.1f} s, llama.cpp's converter {llama_cpp_s:.1f} s")

    n_tensors, fields, their_fields = _assert_same_file(ours, theirs, SMOLLM2_DIFFERENCES)
    assert n_tensors == 30 * 9 + 2
    names = [t.name for t in gguf.GGUFReader(str(ours)).tensors]
    assert "token_embd.weight" in names and "output.weight" not in names  # tied embeddings
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == their_fields["tokenizer.ggml.pre"] == "smollm"
    assert len(fields["tokenizer.ggml.merges"]) == 48900
    tokenizer = load_tokenizer(real_model_dir)
    for path in (ours, theirs):
        assert check_tokenization(path, tokenizer) == {"matching": 87, "total": 87}
