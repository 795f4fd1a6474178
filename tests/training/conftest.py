"""Helpers of the training tests: multi-process runs launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SmallRun


@pytest.fixture(scope="session")
def launch(small_run: SmallRun) -> Callable[..., None]:
    """``launch(script, config, processes)``: run ``script CONFIG RECORDS`` under torchrun,
    where RECORDS is a JSON file beside the config with ``small_run.records()`` as
    ``"train"`` and ``small_run.records(5, start=40)`` as ``"eval"``."""

    def run(script: Path, config: Path, processes: int) -> None:
        records = config.parent / "records.json"
        data = {"train": small_run.records(), "eval": small_run.records(5, start=40)}
        records.write_text(json.dumps(data))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={processes}", str(script), str(config), str(records)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]

    return run
