"""The docs are tested like code.

* Every ```python block of every page under ``docs/`` and of ``README.md`` runs, in order, in
  one namespace per page, in a fresh temporary working directory, offline. A block preceded by
  the line ``<!-- skip -->`` is not run (e.g. one that needs a GPU or a real hub model).
* ``mkdocs build --strict`` succeeds.
* Every script in ``examples/`` runs end to end with small settings, and the example config
  file loads as a ``TrainingConfig``.
* Every ``medlora SUBCOMMAND`` named in a shell block exists in ``medlora --help``.

``make_tiny_llama`` is memoised for this module: the first call with given settings builds the
model, later calls copy it, so each page pays for training, not for building the same model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
SKIP_MARKER = "<!-- skip -->"
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def code_blocks(path: Path) -> Iterator[tuple[str, int, str, bool]]:
    """(language, first code line (1-based), code, skipped) for each fenced block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        language = info.split()[0].strip("{}.").lower() if info else ""
        previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        body: list[str] = []
        i += 1
        start = i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        yield language, start, "\n".join(body) + "\n", previous == SKIP_MARKER


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The python blocks of ``path`` that are meant to run."""
    return [
        (start, code)
        for language, start, code, skipped in code_blocks(path)
        if language in ("python", "py") and not skipped
    ]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built models by settings, shared by every page of this module."""
    return {}


@pytest.fixture
def docs_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A fresh, offline working directory with a memoised ``make_tiny_llama``."""
    import medlora.testing

    real: Callable[..., Path] = medlora.testing._models.make_tiny_llama

    def make_tiny_llama(out_dir: str | Path, **options: Any) -> Path:
        if "corpus" in options or "tokenizer_dir" in options:
            return real(out_dir, **options)
        key = repr(sorted(options.items()))
        if key not in tiny_models:
            tiny_models[key] = real(tmp_path_factory.mktemp("tiny-model"), **options)
        shutil.copytree(tiny_models[key], out_dir, dirs_exist_ok=True)
        return Path(out_dir)

    monkeypatch.setattr(medlora.testing, "make_tiny_llama", make_tiny_llama)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


RUNNABLE = [p for p in PAGES if p.is_file() and python_blocks(p)]


def test_docs_have_runnable_examples() -> None:
    names = {_page_id(p) for p in RUNNABLE}
    for page in (
        "README.md",
        "docs/getting-started.md",
        "docs/guides/data.md",
        "docs/guides/training.md",
        "docs/guides/export.md",
    ):
        assert page in names, f"{page} has no runnable python block"


@pytest.mark.parametrize("page", RUNNABLE, ids=_page_id)
def test_page_python_blocks_run(page: Path, docs_env: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for start, code in python_blocks(page):
        # Pad so that tracebacks show the line numbers of the Markdown file.
        source = "\n" * (start - 1) + code
        exec(compile(source, str(page), "exec"), namespace)


@pytest.mark.heavy  # ~8-12 s on 2 shared cores
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "mkdocstrings", "material", "griffe_fieldz"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert all(f"medlora {name}" in cli_page for name in ("train", "export", "serve", "eval"))
    examples = (tmp_path / "site" / "examples" / "index.html").read_text()
    assert "--8&lt;--" not in examples and "AdapterExporter" in examples  # scripts included


def test_cli_reference_is_the_parsers_help() -> None:
    """The CLI page is generated at build time (hooks/cli_reference.py) from the parser: every
    subcommand has a section holding its own ``--help`` text, so the page cannot drift."""
    import argparse

    from medlora.cli import build_parser

    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "hooks/cli_reference.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.cli_markdown()
    subcommands = hook.subcommands(build_parser())
    names = [name for name, _, _ in subcommands]
    assert names == ["quickstart", "train", "data", "export", "serve", "eval"]
    for name, summary, parser in subcommands:
        assert f"## medlora {name}\n" in page and summary
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, f"medlora {name} {option} is missing"
        assert isinstance(parser, argparse.ArgumentParser)


def test_example_config_loads() -> None:
    from medlora import TrainingConfig

    config = TrainingConfig.from_file(EXAMPLES / "config.yaml")
    assert config.quantization is not None and config.lora.target_modules == "all-linear"


SCRIPTS = sorted(EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_script_runs(script: Path, docs_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = docs_env / "out"
    monkeypatch.setattr(sys, "argv", [str(script), "--steps", "2", "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    assert any(out.rglob("*")), f"{script.name} wrote nothing under --out"


def _cli_help(args: list[str]) -> str:
    exe = Path(sys.executable).with_name("medlora")
    if importlib.util.find_spec("medlora.cli") is None or not exe.is_file():
        pytest.skip("the medlora command is not installed (pip install -e .)")
    proc = subprocess.run(
        [str(exe), *args, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_cli_subcommands_named_in_docs_exist() -> None:
    named: set[str] = set()
    for page in [*PAGES, EXAMPLES / "README.md"]:
        for language, _, code, _ in code_blocks(page):
            if language in ("bash", "sh", "console", "shell"):
                named.update(re.findall(r"(?:^|[\s/])medlora ([a-z][a-z-]*)", code))
    assert named >= {"quickstart", "train", "export"}
    text = _cli_help([])
    missing = sorted(n for n in named if not re.search(rf"\b{re.escape(n)}\b", text))
    assert not missing, f"docs name medlora subcommands that do not exist: {missing}"


def test_skip_marker_is_used_on_real_models_only() -> None:
    """A skipped block must say why it cannot run: a hub id or a GPU."""
    for page in PAGES:
        for language, start, code, skipped in code_blocks(page):
            if skipped:
                assert language in ("python", "py"), f"{page}:{start}: skip marker on {language}"
                if code.startswith('--8<-- "examples/'):
                    continue  # an example script shown whole; test_example_script_runs runs it
                assert re.search(r"tinyllama|cuda|vllm", code, re.IGNORECASE), (
                    f"{page}:{start}: skipped block runs nothing that needs skipping; run it"
                )


def test_code_block_parser_reads_indented_and_skipped_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent("""\
        text
        ```python
        a = 1
        ```
        <!-- skip -->
        ```python
        raise SystemExit
        ```
        !!! note
            ```py
            b = a + 1
            ```
        ```bash
        medlora train x.yaml
        ```
        """)
    )
    assert python_blocks(page) == [(3, "a = 1\n"), (11, "b = a + 1\n")]
