"""Benchmarks run at a smoke size, so they cannot rot unnoticed (the GPU run too, on CPU), and
use only medlora's public API, so a refactor of private modules cannot break them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
SMOKE_FLAGS = {"gpu_run": "--dry-run"}
"""The flag that runs a script at its smoke size, where it is not ``--smoke``."""


PRIVATE = re.compile(r"\b(?:medlora(?:\.\w+)*\._\w+|\w+\._[a-z]\w*|import _[a-z]\w*)")
"""A medlora underscore module, or any underscore attribute or import, in code or in the code
strings a script runs in child processes."""
ALLOWED = {"SFTTrainer._prepare_dataset", "trainer._prepare_dataset", "utils._python_dispatch"}
"""TRL's dataset preparation (the step data_prep.py times) and torch's dispatch mode (the
operator census gpu_run.py takes): other libraries' internals that are what is measured."""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_uses_the_public_api_and_has_a_smoke_size(script: Path) -> None:
    """No underscore module or attribute of medlora (TRL's ``_prepare_dataset``, the step
    data_prep.py times, is allowed by name), and a smoke flag that this file runs."""
    source = script.read_text()
    assert [m for m in PRIVATE.findall(source) if m not in ALLOWED] == []
    flag = SMOKE_FLAGS.get(script.stem, "--smoke")
    assert f'"{flag}"' in source
    runs = (f'_run("{script.stem}"', f'_script("{script.stem}")', f'"{script.stem}.py"')
    assert any(run in Path(__file__).read_text() for run in runs), "no test runs its smoke"


def _run(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``benchmarks/<script>.py`` with ``args`` in a child process; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_data_scale_smoke(tmp_path: Path) -> None:
    """300 kB of records through both backends, each in its own child process: the same
    records and packed rows, and a peak RSS for each."""
    out = _run("data_scale", "--smoke", "--workdir", str(tmp_path))
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["backend"] for r in rows] == ["arrow", "memory"]
    arrow, memory = rows
    assert arrow["records"] == memory["records"] > 100 and arrow["rows"] == memory["rows"]
    assert all(r["peak_rss_mb"] > 0 and r["wall_s"] >= 0 for r in rows)
    assert not list(tmp_path.glob("*.jsonl"))  # generated data is removed


@pytest.mark.slow  # ~15 s on 2 shared cores
def test_data_prep_smoke() -> None:
    """200 records through medlora's and TRL's preparation; both lines and the ratio print."""
    out = _run("data_prep", "--smoke")
    assert "200 records" in out
    assert "medlora: {" in out and "trl:     {" in out
    assert "x records/s" in out


@pytest.mark.slow  # ~17 s: builds the tiny model and its GGUF, starts a server
def test_serve_throughput_smoke() -> None:
    """2 clients x 3 requests against ``medlora serve`` on the tiny model's F16 GGUF."""
    out = _run("serve_throughput", "--smoke")
    assert "requests ok 6, errors 0" in out
    assert "req/s" in out and "latency p50" in out


@pytest.mark.slow  # ~55 s: four trainer processes (TRL and medlora, padded and packed)
def test_train_throughput_smoke(tmp_path: Path) -> None:
    """3 steps of each variant on the tiny model; the table has a row per variant."""
    out = _run("train_throughput", "--smoke", "--out", str(tmp_path))
    table = (tmp_path / "throughput.md").read_text()
    assert table.strip() in out
    for variant in ("trl", "medlora", "trl-packed", "medlora-packed"):
        assert f"| {variant} |" in table


@pytest.mark.slow  # ~60 s: merges, converts and quantizes the tiny model both ways
def test_export_speed_smoke(tmp_path: Path, sdist_dir: Path) -> None:
    """Every step of the export benchmark on the tiny model, llama.cpp's converter included."""
    args = ["--smoke", "--peft-merge", "--sdist", str(sdist_dir), "--cache", str(tmp_path)]
    out = _run("export_speed", *args, "--threads", "1")
    for step in ("streamed", "in-memory peft merge", "GGUF Q4_K_M", "convert_hf_to_gguf.py F16"):
        assert step in out
    assert "all medlora files written: True" in out


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
    out = _run("gguf_fidelity", "--smoke", timeout=900)
    header = "| type | imatrix | MB | synthetic top-1 | synthetic KL | synthetic ppl ratio |"
    assert header in out
    for row in ("| F16 |  |", "| Q4_K_M | no |", "| Q4_K_M | yes |"):
        assert row in out, out


def test_mc_scoring_smoke() -> None:
    """Batched multiple-choice scoring agrees with one forward per option (a few seconds)."""
    report = _script("mc_scoring").main(["--smoke"])
    assert report["questions"] == 8 and report["options"] >= 32
    assert report["max_abs_diff_batched"] < 1e-4


def test_deid_recall_smoke() -> None:
    """4 notes through the pattern layer (and presidio, with the phi extra): the recall table,
    the eponyms line and the overall figures print (~3 s; ~12 s with presidio)."""
    out = _run("deid_recall", "--smoke")
    assert "4 notes from deid_notes.jsonl" in out
    assert "| **overall** |" in out and "| EPONYM |" in out
    assert "patterns: overall recall" in out and "eponyms destroyed" in out
