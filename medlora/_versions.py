"""Versions of medlora and the libraries that shape its artefacts."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = (
    "medlora",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "gguf",
    "llama_cpp_python",
    "safetensors",
    "tokenizers",
)


def library_versions() -> dict[str, str]:
    """Installed versions (``"not installed"`` where absent), plus the Python version."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
