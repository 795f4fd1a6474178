"""Benchmarks run at a smoke size, so they cannot rot unnoticed (the GPU run too, on CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
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


@pytest.mark.slow  # measured 2-6 minutes on 2 shared cores: 4 trainer processes, 2 profiles
def test_gpu_run_dry_run_writes_every_figure(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("OUT", None)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--dry-run"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "gpu-tests.log",
        "profile.json",
        "profile.txt",
        "run.log",
        "throughput.json",
        "throughput.md",
        "versions.txt",
    ]  # at most 8 files: what the device tool brings back
    assert "bitsandbytes: " in (tmp_path / "versions.txt").read_text()
    profile = json.loads((tmp_path / "profile.json").read_text())
    for name in ("padded", "packed"):
        census = profile[name]["census"]
        assert census["matmul"] and census["attention"], census  # products and SDPA were seen
        assert set(census["matmul"]) == {"torch.float32"}  # CPU default precision
        assert profile[name]["runtime"]["packed_attention"] == "position_ids"
    results = json.loads((tmp_path / "throughput.json").read_text())["results"]
    assert [r["variant"] for r in results] == ["trl", "medlora", "trl-packed", "medlora-packed"]
    assert all(r["tokens_per_s"] > 0 and r["timed_steps"] == 2 for r in results)
    packed = {r["variant"]: r["tokens_per_step"] for r in results}
    # Packed rows carry more real tokens per step than padded ones, in both trainers.
    assert packed["medlora-packed"] > packed["medlora"]
    assert packed["trl-packed"] > packed["trl"]
    table = (tmp_path / "throughput.md").read_text()
    assert "| medlora-packed |" in table and "vs TRL" in table


@pytest.mark.slow
def test_gguf_fidelity_smoke() -> None:
    """The whole benchmark on the in-process tiny model: F16 and Q4_K_M with and without
    an importance matrix, scored on held-out replies, printed as a table."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gguf_fidelity.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    header = "| type | imatrix | MB | synthetic top-1 | synthetic KL | synthetic ppl ratio |"
    assert header in out
    for row in ("| F16 |  |", "| Q4_K_M | no |", "| Q4_K_M | yes |"):
        assert row in out, out


def test_mc_scoring_smoke() -> None:
    """Batched multiple-choice scoring agrees with one forward per option (a few seconds)."""
    report = _script("mc_scoring").main(["--smoke"])
    assert report["questions"] == 8 and report["options"] >= 32
    assert report["max_abs_diff_batched"] < 1e-4
