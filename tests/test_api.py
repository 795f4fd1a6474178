"""The public surface: a literal, sorted, complete __all__ and a cheap, side-effect-free import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import medlora

ROOT = Path(__file__).resolve().parents[1]


def _literal_all(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)  # fails unless __all__ is a literal
            return list(value)
    raise AssertionError(f"{path} has no __all__")


def test_all_is_a_sorted_literal_of_existing_names() -> None:
    for init in [ROOT / "medlora/__init__.py", *ROOT.glob("medlora/*/__init__.py")]:
        names = _literal_all(init)
        assert names == sorted(names), f"{init}: __all__ is not sorted"
        assert len(set(names)) == len(names), f"{init}: duplicates in __all__"


def test_all_lists_every_public_name_and_nothing_else() -> None:
    public = {n for n in vars(medlora) if not n.startswith("_")} - {
        "data",
        "training",
        "export",
        "testing",
        "cli",
        "serve",
        "eval",
    }
    assert set(medlora.__all__) - {"__version__"} == public
    for name in medlora.__all__:
        assert hasattr(medlora, name)


def test_import_is_cheap_and_has_no_side_effects() -> None:
    code = (
        "import os, sys; before = dict(os.environ); import medlora; "
        "heavy = [m for m in ('torch', 'bitsandbytes', 'gguf', 'llama_cpp', 'transformers', "
        "'peft', 'vllm', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy; assert dict(os.environ) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_subclass_the_matching_builtins() -> None:
    assert issubclass(medlora.ConfigError, ValueError)
    assert issubclass(medlora.DatasetError, ValueError)
    assert issubclass(medlora.PHIDetectedError, medlora.DatasetError)
    assert issubclass(medlora.ModelLoadError, OSError)
    assert issubclass(medlora.MissingDependencyError, ImportError)
    assert issubclass(medlora.OutOfMemoryError, MemoryError)
    assert issubclass(medlora.ExportError, RuntimeError)
    for name in medlora.__all__:
        obj = getattr(medlora, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, medlora.MedLoraError)


PRIVATE_CROSS_IMPORTS: set[tuple[str, str]] = set()
"""Imports of another package's private modules that are allowed: none."""


def test_no_package_imports_another_packages_private_modules() -> None:
    """``medlora.<pkg>._<module>`` is imported only inside ``medlora/<pkg>/``: other packages
    go through its public names, and shared code lives in a private top-level module."""
    found = set()
    for path in sorted((ROOT / "medlora").rglob("*.py")):
        here = path.relative_to(ROOT / "medlora")
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            for module in modules:
                parts = module.split(".")
                private = len(parts) > 2 and parts[0] == "medlora" and parts[2].startswith("_")
                if private and here.parts[0] != parts[1]:
                    found.add((str(here), module))
    assert found == PRIVATE_CROSS_IMPORTS
