"""mkdocs hook: the CLI reference page (``reference/cli.md``), written at build time from
``medlora.cli.build_parser()``, so the page is always the parser's own help and cannot drift.

Registered under ``hooks:`` in mkdocs.yml; no plugin to install.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"
WIDTH = "100"
"""Terminal width the help is wrapped at (argparse reads ``COLUMNS``), so builds agree."""

INTRO = """# CLI reference

`medlora` is installed with the package. This page is generated from the argument parser
when the docs are built (`hooks/cli_reference.py`), so it always matches the installed
command; `medlora SUBCOMMAND --help` prints the same text.
"""


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, Any]]:
    """(name, one-line help, parser) per subcommand, in the parser's order (read from
    argparse's action list: it has no public accessor for subcommands)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def cli_markdown() -> str:
    """The page: the top-level help, then one section per subcommand with its help."""
    from medlora.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        parts = [INTRO, "## medlora\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
        for name, summary, sub in subcommands(parser):
            parts.append(f"## medlora {name}\n\n{summary[:1].upper()}{summary[1:]}.\n")
            parts.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts)


def on_files(files: Files, config: Any) -> Files:
    """Add the generated page to the site's files (the nav names it like any other page)."""
    files.append(File.generated(config, PAGE, content=cli_markdown()))
    return files
