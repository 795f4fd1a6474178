"""No function in medlora/ is over 80 lines: long ones grow hidden state (house style)."""

from __future__ import annotations

import ast
from pathlib import Path

import medlora

MAX_LINES = 80


def _long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    where = path.relative_to(root.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_medlora_is_over_80_lines() -> None:
    assert _long_functions(Path(medlora.__file__).parent) == []


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (package / "long.py").write_text(
        f"def long() -> None:\n{body}\n\n\ndef short() -> None:\n    pass\n"
    )
    assert _long_functions(package) == [f"pkg/long.py:1 long ({MAX_LINES + 1} lines)"]
