"""Callbacks (by composition) and the loggers built on them: JSONL, TensorBoard, loss plot."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from medlora._io import append_text, atomic_file, atomic_path


class Callback(Protocol):
    """Hooks the loop calls on the main process. Implement any of the three; missing ones
    are skipped. Raising ``KeyboardInterrupt`` from a hook stops the run like Ctrl-C (a
    checkpoint is saved first)."""

    def on_step(self, step: int, logs: Mapping[str, float]) -> None:
        """After each optimizer step, with the step's log record."""

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """After each evaluation: ``eval_loss`` and ``eval_perplexity``."""

    def on_save(self, step: int, path: Path) -> None:
        """After a checkpoint directory has been written completely."""


def dispatch(callbacks: Any, event: str, step: int, payload: Any) -> None:
    """Call ``event`` on every callback that defines it."""
    for callback in callbacks:
        hook = getattr(callback, event, None)
        if hook is not None:
            hook(step, payload)


class JsonlLogger:
    """Appends one JSON line per logged step (and per evaluation) to ``log.jsonl``."""

    def __init__(self, path: Path, *, log_every: int, resume_step: int) -> None:
        self.path, self.log_every = path, log_every
        kept: list[str] = []
        if resume_step and path.is_file():  # drop lines logged after the checkpoint
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= resume_step]
        with atomic_file(path) as handle:  # a kill here leaves the old log or the new one
            handle.write("".join(line + "\n" for line in kept))
        self.pending: dict[str, Any] | None = None

    def on_step(self, step: int, logs: Mapping[str, float]) -> None:
        self.flush()
        self.pending = dict(logs)
        if step % self.log_every:
            self.pending = None

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.pending is None or self.pending["step"] != step:
            self.pending = {"step": step}
        self.pending.update(metrics)

    def on_save(self, step: int, path: Path) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the pending record now: the loop calls this before a checkpoint is written,
        so a checkpoint never lands without its own step in the log (a resume keeps it)."""
        if self.pending is not None:
            append_text(self.path, json.dumps(self.pending) + "\n")
            self.pending = None

    def close(self) -> None:
        """Write the last pending record."""
        self.flush()


class TensorBoardLogger:
    """Scalars under ``run_dir/tensorboard`` (``tensorboard --logdir runs``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def on_step(self, step: int, logs: Mapping[str, float]) -> None:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            if key in logs:
                self.writer.add_scalar(f"train/{key}", logs[key], step)

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key.replace("eval_", "eval/"), value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def tensorboard_logger(log_dir: Path) -> TensorBoardLogger | None:
    """A TensorBoard logger, or ``None`` (with a warning) when tensorboard is missing."""
    try:
        return TensorBoardLogger(log_dir)
    except ImportError:
        warnings.warn(
            "tensorboard is not installed, so only log.jsonl is written "
            "(pip install tensorboard, or set tensorboard: false)",
            stacklevel=3,
        )
        return None


def plot_losses(log_path: Path, out_path: Path) -> bool:
    """Draw training and held-out loss from ``log.jsonl`` into a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train")
    if held:
        ax.plot(*zip(*held, strict=True), marker="o", label="held out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per supervised token)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True
