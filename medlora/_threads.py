"""CPU threads for torch and llama.cpp, set for a block of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_LLAMA_CPP_THREADS: ContextVar[int | None] = ContextVar("medlora_llama_cpp_threads", default=None)
"""Threads llama.cpp work uses when a call does not say (``None``: llama.cpp's defaults)."""


def default_threads() -> int | None:
    """llama.cpp's thread count set by the innermost :func:`cpu_threads` block, if any."""
    return _LLAMA_CPP_THREADS.get()


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Torch and llama.cpp on ``n`` CPU threads inside the block (``None``: unchanged).

    llama.cpp's count is a context variable, so concurrent threads and tasks keep their own;
    torch's is process-wide and restored when the block exits.
    """
    if n is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    token = _LLAMA_CPP_THREADS.set(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        _LLAMA_CPP_THREADS.reset(token)
