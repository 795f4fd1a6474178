"""Benchmarks run at a smoke size, so they cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_real_quality_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole pipeline (data mix, QLoRA, export with a Q4_K_M GGUF, the four-model table)
    on the tiny model and stand-in files it writes itself; about 20 s of CPU."""
    report = _script("real_quality").main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    names = ["base", "adapter (4-bit base + LoRA)", "merged", "GGUF Q4_K_M"]
    assert list(report["rows"]) == names
    printed = capsys.readouterr().out
    table = (tmp_path / "quality.md").read_text()
    assert table in printed
    for name in names:
        assert f"| {name} |" in table
    for column in ("note perplexity", "multiple-choice acc", "ROUGE-L", "refusal rate"):
        assert column in table.splitlines()[0]
    written = json.loads((tmp_path / "quality.json").read_text())
    assert written["rows"]["merged"]["refusal_n"] == 2
    assert written["refusal_detector"]["recall"] == 1.0
