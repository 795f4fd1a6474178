"""The public surface: a literal, sorted, complete __all__ and a cheap, side-effect-free import."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

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


PACKAGES = ["medlora"] + [
    f"medlora.{m.name}"
    for m in pkgutil.iter_modules(medlora.__path__)
    if m.ispkg and not m.name.startswith("_")
]


def test_every_package_all_lists_its_public_names() -> None:
    for name in PACKAGES:
        module = importlib.import_module(name)
        public = {
            n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)
        }
        assert public == set(module.__all__) - {"__version__"}, name


def _medlora_classes(hint: Any, out: set[type]) -> None:
    if isinstance(hint, type):
        if hint.__module__.startswith("medlora"):
            out.add(hint)
        return
    for arg in typing.get_args(hint):
        _medlora_classes(arg, out)


def test_every_type_users_receive_is_importable() -> None:
    """Return types of public functions and methods, and the types of public fields, are
    exported by some package's ``__all__``."""
    exported: dict[int, str] = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        exported.update({id(getattr(module, n)): f"{name}.{n}" for n in module.__all__})
    torch = importlib.import_module("torch")  # annotations name torch.Tensor
    namespace = {n.rsplit(".", 1)[1]: obj for n, obj in _objects(exported)} | {"torch": torch}
    received: dict[type, str] = {}
    for where in exported.values():
        obj = _lookup(where)
        hints: list[Any] = []
        members = [obj]
        if inspect.isclass(obj):
            hints += [
                h for k, h in typing.get_type_hints(obj, None, namespace).items() if k[0] != "_"
            ]
            members = [
                getattr(v, "fget", None) or getattr(v, "__func__", v)
                for k, v in vars(obj).items()
                if not k.startswith("_")
            ]
        for member in filter(inspect.isfunction, members):
            hints.append(typing.get_type_hints(member, None, namespace).get("return"))
        found: set[type] = set()
        for hint in hints:
            _medlora_classes(hint, found)
        received.update({c: where for c in found if id(c) not in exported})
    assert received == {}


def _lookup(dotted: str) -> Any:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _objects(exported: dict[int, str]) -> list[tuple[str, Any]]:
    return [(where, _lookup(where)) for where in exported.values()]


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
