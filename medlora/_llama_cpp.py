"""Open GGUF files with llama.cpp (llama-cpp-python), safely on every CPU."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medlora._errors import ModelLoadError
from medlora._optional import require
from medlora._threads import default_threads


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send what C code writes to file descriptor 2 into a list instead of the terminal.

    llama.cpp's quantizer logs every tensor to stderr; callers show the captured text only
    when something failed. llama-cpp-python's log callback writes through ``sys.stderr``
    instead, which may not be file descriptor 2 (pytest, notebooks), so that is captured too.
    The list is filled when the block exits: descriptor 2's lines, then ``sys.stderr``'s.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    python_side = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink, contextlib.redirect_stderr(python_side):
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())
            lines.extend(python_side.getvalue().splitlines())


@contextlib.contextmanager
def llama_cpp_log_lines() -> Iterator[None]:
    """Let llama.cpp's informational log lines reach stderr for the block.

    llama-cpp-python routes llama.cpp's log through the ``llama-cpp-python`` logger and drops
    lines under its level, which every ``Llama(verbose=False)`` sets to ERROR; the quantizer's
    report (importance matrix taken, tensors it found no entry for) is INFO. The logger's level
    is restored when the block exits.
    """
    logger = logging.getLogger("llama-cpp-python")
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.setLevel(saved)


@functools.cache
def _plain_buffer_llama(llama_class: type) -> type:
    """``llama_class`` (``llama_cpp.Llama``) keeping weights in plain CPU buffers (no AMX
    repacking).

    llama.cpp's AMX buffer type crashes on quantized weights on some Xeon CPUs
    (ggml-org/llama.cpp#20824) and llama-cpp-python offers no argument to turn it off. Its
    ``__init__`` stores the model parameters it builds in ``self.model_params`` before loading
    the model, so this subclass sees them on the way in and sets ``use_extra_bufts`` off.
    """

    class PlainBufferLlama(llama_class):  # type: ignore[misc, valid-type]
        @property
        def model_params(self) -> Any:
            return self.__dict__["_medlora_model_params"]

        @model_params.setter
        def model_params(self, value: Any) -> None:
            if hasattr(value, "use_extra_bufts"):
                value.use_extra_bufts = False
            self.__dict__["_medlora_model_params"] = value

    return PlainBufferLlama


def open_gguf(
    path: str | Path,
    *,
    n_ctx: int = 2048,
    logits_all: bool = False,
    n_threads: int | None = None,
    **kwargs: Any,
) -> Any:
    """A ``llama_cpp.Llama`` for ``path``; quiet, CPU-safe, with the file's own chat template.

    ``n_threads`` also sets the prompt-processing threads (``n_threads_batch``, else one per
    CPU): on a busy machine a second thread that waits for a core made evaluating a 105-token
    prompt 7x slower (2.1 -> 15.6 s, 1 vs 2 batch threads, SmolLM2 Q4_K_M, 2 loaded cores).
    """
    llama_cpp = require("llama_cpp", "Running GGUF models")
    if n_threads is None:
        n_threads = default_threads()
    if n_threads is not None:
        kwargs.setdefault("n_threads_batch", n_threads)
    with captured_stderr() as log:
        try:
            return _plain_buffer_llama(llama_cpp.Llama)(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=logits_all,
                n_threads=n_threads,
                verbose=False,
                **kwargs,
            )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            failure = exc
    reason = "\n".join(log[-5:])
    raise ModelLoadError(f"llama.cpp cannot load {path}: {failure}\n{reason}") from failure
