"""Open GGUF files with llama.cpp (llama-cpp-python), safely on every CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from medlora._optional import require


@contextlib.contextmanager
def _no_extra_buffer_types(llama_cpp: Any) -> Iterator[None]:
    """Keep weights in plain CPU buffers (no AMX repacking).

    llama.cpp's AMX buffer type crashes on quantized weights on some Xeon CPUs
    (ggml-org/llama.cpp#20824) and llama-cpp-python offers no argument to turn it off, so the
    default model parameters are patched while the model loads.
    """
    default = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> Any:
        value = default()
        if hasattr(value, "use_extra_bufts"):
            value.use_extra_bufts = False
        return value

    with mock.patch.object(llama_cpp.llama_cpp, "llama_model_default_params", params):
        yield


def open_gguf(
    path: str | Path,
    *,
    n_ctx: int = 2048,
    logits_all: bool = False,
    n_threads: int | None = None,
    **kwargs: Any,
) -> Any:
    """A ``llama_cpp.Llama`` for ``path``; quiet, CPU-safe, with the file's own chat template."""
    llama_cpp = require("llama_cpp", "Running GGUF models")
    import llama_cpp.llama as llama_module

    with _no_extra_buffer_types(llama_module):
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            logits_all=logits_all,
            n_threads=n_threads,
            verbose=False,
            **kwargs,
        )
