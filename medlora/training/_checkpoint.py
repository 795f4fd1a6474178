"""Resumable checkpoints: adapter, optimizer, scheduler, RNG states and data position.

A checkpoint is a directory ``run_dir/checkpoints/step-0000010`` written atomically::

    adapter/            the peft adapter at that step (loadable on its own)
    trainer_state.pt    optimizer, scheduler, RNG (python, numpy, torch, cuda), data order
    state.json          step, tokens, per-step losses, best eval loss and step, patience
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from medlora._errors import TrainingError
from medlora._hub import copy_tokenizer_files
from medlora._io import atomic_dir, write_json

CHECKPOINTS = "checkpoints"


def save_adapter(model: Any, base: Path, target: Path, tokenizer: Any = None) -> Path:
    """Write the peft adapter atomically to ``target`` with the base's tokenizer beside it
    (``tokenizer``: the one loaded from ``base``, so it is not loaded again)."""
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer_files(base, tmp, tokenizer)
        config_path = tmp / "adapter_config.json"
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = str(base)
        write_json(config_path, data)
    return target


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (and CUDA when present)."""
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    order: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint for ``state["step"]`` atomically; keep only the latest ``keep``."""
    import torch

    target = run_dir / CHECKPOINTS / f"step-{state['step']:07d}"
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        blob = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "order": order,
        }
        torch.save(blob, tmp / "trainer_state.pt")
        write_json(tmp / "state.json", state)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    """Copy the adapter weights saved in ``adapter_dir`` into the peft ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(adapter_dir / "adapter_model.safetensors"))


def load_checkpoint(
    path: Path, *, model: Any, optimizer: Any, scheduler: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore adapter, optimizer, scheduler and RNG from ``path``; returns (state, order)."""
    import torch

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        blob = torch.load(path / "trainer_state.pt", weights_only=False)
        load_adapter_weights(model, path / "adapter")
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise TrainingError(
            f"cannot resume from {path}: {exc}. Delete that checkpoint directory to resume "
            "from the one before, or set resume: false to start over."
        ) from exc
    set_rng_state(blob["rng"])
    return state, blob["order"]
