"""vLLM: the exact ``vllm serve`` command for a merged directory or an adapter (the contract
check itself lives with the exporter, which writes those directories)."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

from medlora._errors import ModelLoadError
from medlora._optional import require
from medlora.export._vllm import VLLM_LORA_RANKS


def _lora_rank_flag(adapter: Path) -> int:
    rank = int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 16))
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def vllm_command(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    name: str | None = None,
    base: str | None = None,
) -> list[str]:
    """The ``vllm serve`` command line for a merged directory or an adapter directory.

    For an adapter the base model is served with ``--enable-lora --lora-modules NAME=DIR``
    (base from ``adapter_config.json`` unless ``base`` is given); clients ask for ``NAME``.

    Raises:
        ModelLoadError: ``path`` is neither a model directory nor an adapter directory.
    """
    from medlora.serve._load import adapter_base

    directory = Path(path).resolve()
    name = name or directory.name
    if (directory / "adapter_config.json").is_file():
        base_model = base or adapter_base(directory)
        command = ["vllm", "serve", base_model, "--enable-lora"]
        command += ["--lora-modules", f"{name}={directory}"]
        command += ["--max-lora-rank", str(_lora_rank_flag(directory))]
    elif (directory / "config.json").is_file():
        command = ["vllm", "serve", str(directory), "--served-model-name", name]
    else:
        raise ModelLoadError(
            f"{directory} is neither a merged model (config.json) nor an adapter "
            "(adapter_config.json)"
        )
    command += ["--host", host, "--port", str(port)]
    if api_key:
        command += ["--api-key", api_key]
    return command


def vllm_available() -> bool:
    """Whether vLLM is importable here."""
    return importlib.util.find_spec("vllm") is not None


def exec_vllm(command: list[str]) -> None:
    """Replace this process by ``command`` when vLLM is installed.

    Raises:
        MissingDependencyError: vLLM is not installed (the message has the install line and
            the command to run on a GPU machine).
    """
    import os

    if not vllm_available():
        require("vllm", f"Serving with vLLM (on a GPU machine run: {shlex.join(command)})")
    os.execvp(command[0], command)  # pragma: no cover - needs vLLM and a GPU
