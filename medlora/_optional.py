"""Import heavy optional libraries only where they are used, with a clear install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from medlora._errors import MissingDependencyError

_INSTALL = {
    "bitsandbytes": "pip install bitsandbytes",
    "gguf": "pip install gguf",
    "llama_cpp": "pip install 'llama-cpp-python[server]'",
    "vllm": "pip install 'medlora[vllm]' (needs a CUDA GPU)",
    "trl": "pip install 'medlora[bench]'",
    "matplotlib": "pip install matplotlib",
    "tensorboard": "pip install tensorboard",
    "sentencepiece": "pip install sentencepiece",
    "presidio_analyzer": "pip install 'medlora[phi]'",
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``feature``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        line = _INSTALL.get(top, f"pip install {top}")
        raise MissingDependencyError(
            f"{feature} needs the {top!r} package, which is not installed. Install it with: {line}"
        ) from exc
