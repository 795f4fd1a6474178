"""A real ``medlora serve`` process on loopback, started once per module and stopped after."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import Server, pick_port, serve_argv


@pytest.fixture
def free_port() -> int:
    return pick_port()


@pytest.fixture(scope="module")
def server(exported: Any) -> Iterator[Server]:
    """``medlora serve`` on the exported Q8_0 GGUF, model id ``clinical-tiny``."""
    port = pick_port()
    srv = Server(serve_argv(exported.gguf_files["Q8_0"], port, "--name", "clinical-tiny"), port)
    srv.wait_ready()
    yield srv
    code, out = srv.stop()
    assert code == 0, out
