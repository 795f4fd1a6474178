"""Benchmarks run at a smoke size, so they do not rot (their figures are in docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
