"""Opening GGUF files with llama.cpp: weights in plain CPU buffers, without patching it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")


def test_open_gguf_turns_extra_buffer_types_off_without_touching_llama_cpp(
    random_model_dir: Path, tmp_path: Path
) -> None:
    """The model loads with ``use_extra_bufts`` off (no AMX repacking), and llama-cpp-python's
    own ``Llama`` and default parameters are as they were."""
    import llama_cpp

    from medlora.export import open_gguf, write_gguf

    gguf = write_gguf(random_model_dir, tmp_path / "tiny.gguf", outtype="Q8_0")
    default = llama_cpp.llama_cpp.llama_model_default_params
    llm = open_gguf(gguf, n_ctx=64, n_threads=1)
    try:
        assert isinstance(llm, llama_cpp.Llama)
        assert llm.model_params.use_extra_bufts is False
        assert llm.tokenize(b"sepsis")  # loaded and usable
        assert llama_cpp.llama_cpp.llama_model_default_params is default
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True
    finally:
        llm.close()


def test_cpu_threads_reach_llama_cpp_and_torch_and_are_restored(
    random_model_dir: Path, tmp_path: Path
) -> None:
    """Inside ``cpu_threads(n)`` (what ``ExportConfig.threads`` runs the export in), llama.cpp
    models opened without a thread count use ``n`` for generation and prompt batches, and
    torch runs on ``n``; both are back to their defaults afterwards."""
    import torch

    from medlora._threads import cpu_threads, default_threads
    from medlora.export import open_gguf, write_gguf

    gguf = write_gguf(random_model_dir, tmp_path / "tiny.gguf", outtype="F16")
    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    with cpu_threads(wanted):
        assert default_threads() == wanted
        assert torch.get_num_threads() == wanted
        llm = open_gguf(gguf, n_ctx=64)
        try:
            assert llm.context_params.n_threads == wanted
            assert llm.context_params.n_threads_batch == wanted
        finally:
            llm.close()
        explicit = open_gguf(gguf, n_ctx=64, n_threads=1)  # an explicit count still wins
        try:
            assert explicit.context_params.n_threads_batch == 1
        finally:
            explicit.close()
    assert default_threads() is None
    assert torch.get_num_threads() == before
