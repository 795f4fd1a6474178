"""Resumable checkpoints: adapter, optimizer, scheduler, RNG states and data position.

A checkpoint is a directory ``run_dir/checkpoints/step-0000010`` written atomically::

    adapter/            the peft adapter at that step (loadable on its own)
    trainer_state.pt    optimizer, scheduler, RNG (python, numpy, torch, cuda), data order
    state.json          step, tokens, per-step losses, best eval loss and step, patience
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from pathlib import Path
from typing import Any

from medlora._errors import TrainingError
from medlora._fault import fault_point
from medlora._hub import copy_tokenizer_files
from medlora._io import (
    PARTIAL_MARKER,
    atomic_dir,
    is_complete,
    recover,
    remove_dir,
    tree_size,
    write_json,
)

CHECKPOINTS = "checkpoints"
_STEP = re.compile(r"^step-\d+$")
DISK_HINT = (
    "free some space, lower keep_checkpoints or choose another output_dir; the previous "
    "{what} is intact (resume: true continues from the last checkpoint)"
)


def save_adapter(model: Any, base: Path, target: Path, tokenizer: Any = None) -> Path:
    """Write the peft adapter atomically to ``target`` with the base's tokenizer beside it
    (``tokenizer``: the one loaded from ``base``, so it is not loaded again)."""
    need = tree_size(target)  # about what the one it replaces took
    hint = DISK_HINT.format(what=f"{target.name}/")
    with atomic_dir(target, error=TrainingError, need=need, hint=hint) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        fault_point("adapter-write", target.name)
        copy_tokenizer_files(base, tmp, tokenizer)
        config_path = tmp / "adapter_config.json"
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = str(base)
        if isinstance(data.get("target_modules"), list):  # a set in peft: hash-seed order
            data["target_modules"] = sorted(data["target_modules"])
        write_json(config_path, data)
    return target


def _is_checkpoint(path: Path) -> bool:
    """Complete by its marker; one written before medlora marked directories (no marker of
    either kind) by its ``state.json``, then its last file."""
    if is_complete(path):
        return True
    return not (path / PARTIAL_MARKER).exists() and (path / "state.json").is_file()


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP.match(p.name) and _is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def clean_checkpoints(run_dir: Path) -> None:
    """Remove what killed runs left under ``checkpoints/``: unfinished checkpoint writes and
    checkpoints half deleted while pruning."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return
    recover(root)
    for path in root.iterdir():
        if _STEP.match(path.name) and path.is_dir() and not _is_checkpoint(path):
            remove_dir(path)


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
    latest = checkpoint_dirs(run_dir)[-1:]
    need = tree_size(latest[0]) if latest else 0  # checkpoints are all about the same size
    hint = DISK_HINT.format(what="checkpoint")
    with atomic_dir(target, error=TrainingError, need=need, hint=hint) as tmp:
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        fault_point("checkpoint-write", target.name)
        blob = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "order": order,
        }
        with open(tmp / "trainer_state.pt", "wb") as handle:  # a full disk shows as ENOSPC
            torch.save(blob, handle)
        write_json(tmp / "state.json", state)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        with contextlib.suppress(OSError):  # pruning is housekeeping; the next save retries
            remove_dir(old)
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
