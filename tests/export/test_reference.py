"""medlora's GGUF writer against llama.cpp's own ``convert_hf_to_gguf.py`` (reference test).

A TinyLlama-shaped model (exact TinyLlama-1.1B shapes but 2 layers, random weights) with the
real 32,000-token Llama SentencePiece vocabulary is converted to F16 by both; every tensor must
be byte-identical (same names, order, types and shapes), and every metadata key equal except
the ones listed in ``EXPECTED_DIFFERENCES``. Measured here (2 cores): model build ~60 s,
llama.cpp's converter 13 s, medlora 9 s; 21/21 tensors identical.

The converter comes from the llama-cpp-python sdist of the installed version (it vendors
llama.cpp); the test downloads it once into a cache under the temp directory, and skips with a
reason when ``../shared`` or PyPI is unavailable.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
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


def _sdist_converter() -> Path:
    """``convert_hf_to_gguf.py`` of the installed llama-cpp-python's vendored llama.cpp."""
    version = metadata.version("llama-cpp-python")
    cache = Path(tempfile.gettempdir()) / "medlora-test-cache" / f"llama-cpp-python-{version}"
    script = cache / f"llama_cpp_python-{version}" / "vendor/llama.cpp/convert_hf_to_gguf.py"
    if script.is_file():
        return script
    cache.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "-d",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    archives = list(cache.glob("llama_cpp_python-*.tar.gz"))
    if download.returncode != 0 or not archives:
        pytest.skip(f"cannot download the llama-cpp-python {version} sdist (offline?)")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(cache, filter="data")
    if not script.is_file():
        pytest.skip(f"the llama-cpp-python {version} sdist has no convert_hf_to_gguf.py")
    return script


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.slow
def test_f16_is_tensor_identical_to_llama_cpp_converter(tmp_path: Path, shared_dir: Path) -> None:
    from medlora.export import write_gguf
    from medlora.testing import make_tinyllama_shaped, tokenizer_from_gguf_vocab

    vocab = shared_dir / "data/llama-spm-vocab/ggml-vocab-llama-spm.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is missing")
    converter = _sdist_converter()
    tok = tokenizer_from_gguf_vocab(vocab, tmp_path / "tok")
    model = make_tinyllama_shaped(tmp_path / "model", num_hidden_layers=2, tokenizer_dir=tok)

    ours = write_gguf(model, tmp_path / "medlora-F16.gguf", outtype="F16")
    theirs = tmp_path / "llama-cpp-F16.gguf"
    env_path = str(converter.parent / "gguf-py")
    subprocess.run(
        [sys.executable, str(converter), str(model), "--outtype", "f16", "--outfile", str(theirs)],
        check=True,
        capture_output=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )

    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert len(a.tensors) == 2 * 9 + 3
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x.tensor_type == y.tensor_type, x.name
        assert list(x.shape) == list(y.shape), x.name
        assert np.array_equal(np.asarray(x.data), np.asarray(y.data)), x.name

    fa, fb = _fields(ours), _fields(theirs)
    differing = {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}
    assert differing == set(EXPECTED_DIFFERENCES), {
        k: (fa.get(k), fb.get(k)) for k in differing ^ set(EXPECTED_DIFFERENCES)
    }
    assert len(fa["tokenizer.ggml.tokens"]) == 32000
