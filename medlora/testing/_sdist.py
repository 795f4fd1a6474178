"""llama.cpp's own files, offline: the llama-cpp-python source distribution.

The sdist of the installed llama-cpp-python vendors the llama.cpp it was built from, under
``vendor/llama.cpp``: the reference converter ``convert_hf_to_gguf.py`` with its ``gguf-py``,
and vocabulary-only GGUFs with tokenizer test vectors (``models/ggml-vocab-*.gguf`` and
``.inp``/``.out``). :func:`llama_cpp_sdist` fetches it once with pip from the package registry
and keeps it unpacked in the cache of :func:`~medlora.testing._smollm2.cache_dir`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from medlora._errors import ModelLoadError
from medlora.testing._smollm2 import cache_dir

LLAMA_CPP = "vendor/llama.cpp"
"""llama.cpp's checkout inside the unpacked sdist."""
CONVERTER = f"{LLAMA_CPP}/convert_hf_to_gguf.py"
"""llama.cpp's reference HF -> GGUF converter, relative to the sdist root."""
VOCAB_MODELS = f"{LLAMA_CPP}/models"
"""Vocabulary-only GGUFs and their tokenizer test vectors, relative to the sdist root."""


def llama_cpp_sdist(cache: str | Path | None = None, *, version: str | None = None) -> Path:
    """The unpacked llama-cpp-python sdist (of the installed version by default).

    Args:
        cache: Cache root (default :func:`~medlora.testing._smollm2.cache_dir`); the archive
            goes to ``downloads/``, the unpacked tree to ``sdist/llama_cpp_python-<version>``.
        version: The llama-cpp-python version; the installed one by default.

    Returns:
        The sdist root; llama.cpp is under :data:`LLAMA_CPP`.

    Raises:
        ModelLoadError: The sdist cannot be downloaded (no registry) or lacks llama.cpp's
            converter; tests turn this into a skip.
    """
    version = version or metadata.version("llama-cpp-python")
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    name = f"llama_cpp_python-{version}"
    target = root / "sdist" / name
    if (target / CONVERTER).is_file():
        return target
    archive = _download(root / "downloads", name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        if not (staging / name / CONVERTER).is_file():
            raise ModelLoadError(f"{archive} has no {CONVERTER}; is it a llama-cpp-python sdist?")
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(downloads: Path, name: str, version: str) -> Path:
    archive = downloads / f"{name}.tar.gz"
    if archive.is_file():
        return archive
    downloads.mkdir(parents=True, exist_ok=True)
    requirement = f"llama-cpp-python=={version}"
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += [requirement, "-d", tmp, "-q", "--disable-pip-version-check"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            said = (done.stderr + done.stdout).strip().splitlines()
            reason = said[-1] if said else f"pip exited with {done.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
        fetched = Path(tmp) / archive.name
        if not fetched.is_file():
            raise ModelLoadError(
                f"cannot download the {requirement} sdist (llama.cpp's converter and test "
                f"vocabularies) from the package registry: {reason}"
            )
        os.replace(fetched, archive)
    return archive
