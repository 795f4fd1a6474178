"""medlora does not patch the packages it uses at run time (``mock.patch``, assigning a
module's attributes): such patches break silently on a dependency's next release and are
not thread-safe. Supported parameters, small subclasses or version gates instead."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medlora"
MOCK = re.compile(r"unittest\.mock|from unittest import mock|mock\.patch")


def test_no_mock_in_the_library() -> None:
    found = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if MOCK.search(path.read_text())
    )
    assert found == []


def _module_names(tree: ast.Module) -> set[str]:
    """Names a module binds to other modules: ``import x``, ``import x as y`` and
    ``y = require("x", ...)`` (medlora's optional import)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "require"
        ):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _module_attribute_writes(path: Path, root: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text())
    modules = _module_names(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
        ):
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        for target in targets:
            base = target
            while isinstance(base, ast.Attribute):
                base = base.value
            if target is not base and isinstance(base, ast.Name) and base.id in modules:
                found.append(f"{path.relative_to(root)} {ast.unparse(target)}")
    return found


SETTINGS = {
    "training/_trainer.py torch.backends.cuda.matmul.allow_tf32",
    "training/_trainer.py torch.backends.cudnn.allow_tf32",
}
"""Not patches: torch's documented switches, which are set by assignment."""


def test_no_assignment_to_another_modules_attributes() -> None:
    """No ``module.attr = ...``, ``setattr(module, ...)`` or ``del module.attr`` on a module
    medlora imports (llama_cpp, transformers, uvicorn...), beyond torch's switches."""
    found = {
        hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _module_attribute_writes(path)
    }
    assert found == SETTINGS


def test_the_attribute_check_finds_a_patch(tmp_path: Path) -> None:
    sample = tmp_path / "patching.py"
    sample.write_text(
        "import llama_cpp.llama as lm\nfrom medlora._optional import require\n"
        "uv = require('uvicorn', 'x')\nlm.llama_cpp.f = 1\nsetattr(uv, 'Server', 2)\n"
        "local = object()\nlocal.x = 3\n"
    )
    assert _module_attribute_writes(sample, tmp_path) == [
        "patching.py lm.llama_cpp.f",
        "patching.py uv.?",
    ]


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
