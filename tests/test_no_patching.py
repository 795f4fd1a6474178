"""medlora does not patch the packages it uses at run time (``mock.patch``, assigning a
module's attributes): such patches break silently on a dependency's next release and are
not thread-safe. Supported parameters, small subclasses or version gates instead."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medlora"
MOCK = re.compile(r"unittest\.mock|from unittest import mock|mock\.patch")
STILL_PATCHING = {"_llama_cpp.py"}
"""llama-cpp-python's server builds its ``Llama`` itself and takes no parameter or class for
the extra buffer types, so :func:`no_extra_buffer_types` patches its default parameters while
the server starts. Remove the entry when that patch goes."""


def test_no_mock_in_the_library() -> None:
    found = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if MOCK.search(path.read_text())
    }
    assert found == STILL_PATCHING


def test_graceful_signal_handling_is_a_uvicorn_subclass_not_a_patch() -> None:
    """``serve_gguf``'s server stops gracefully on SIGINT/SIGTERM through an overridden
    ``capture_signals``; uvicorn's class keeps its own."""
    import signal

    import pytest

    uvicorn = pytest.importorskip("uvicorn")
    from medlora.serve._server import _graceful_server

    server = _graceful_server(uvicorn)(uvicorn.Config(app=None))
    assert isinstance(server, uvicorn.Server)
    assert "capture_signals" not in vars(server)  # a method of the subclass, not assigned
    with server.capture_signals():
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)  # type: ignore[operator]
    assert server.should_exit and not server.force_exit
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
