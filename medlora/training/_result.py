"""TrainingResult: what a finished run produced and measured."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from medlora._versions import library_versions


@attrs.frozen(kw_only=True)
class TrainingResult:
    """What a finished run produced and measured."""

    run_dir: Path
    """The run directory (``medlora.json``, ``log.jsonl``, ``adapter/``, ``checkpoints/``)."""
    adapter_dir: Path
    """The final peft adapter (``adapter_model.safetensors`` + ``adapter_config.json``): the
    best one by held-out loss when ``select_best`` and ``eval_every`` are set, else the last."""
    base_model: Path
    """The local directory of the base model the adapter belongs to."""
    steps: int
    """Optimizer steps taken (fewer than ``max_steps`` after early stopping)."""
    train_tokens: int
    """Supervised (non-padding) tokens seen."""
    initial_eval_loss: float
    """Held-out loss of the base model before training (NaN without a held-out set)."""
    final_eval_loss: float
    """Held-out loss of the final adapter."""
    train_losses: tuple[float, ...]
    """Mean training loss of each optimizer step."""
    seconds: float
    """Wall time of the training loop."""
    quantized_modules: int
    """``Linear4bit`` modules in the model during training (0 for plain LoRA)."""
    best_step: int | None = None
    """Step of the best held-out loss among periodic evaluations (None without them)."""
    best_eval_loss: float = float("nan")
    """That best held-out loss."""
    stopped_early: bool = False
    """Whether early stopping ended the run."""
    resumed_from_step: int | None = None
    """The checkpoint step this run continued from, if it resumed."""
    checkpoints: tuple[Path, ...] = ()
    """Checkpoint directories left in the run directory, oldest first."""
    timings: Mapping[str, float] = attrs.field(factory=dict)
    """Seconds spent in ``setup``, ``train`` (steps only), ``eval`` and ``save``."""

    @property
    def final_eval_perplexity(self) -> float:
        """``exp(final_eval_loss)``."""
        return math.exp(self.final_eval_loss)


def run_record(
    result: TrainingResult,
    config: dict[str, Any],
    train_set: Any,
    eval_set: Any,
    source: str,
    adapter_step: int,
) -> dict[str, Any]:
    """The content of the run directory's ``medlora.json``."""
    return {
        "kind": "training-run",
        "config": config,
        "base_model": str(result.base_model),
        "data_fingerprint": train_set.fingerprint,
        "train_records": len(train_set),
        "eval_records": 0 if eval_set is None else len(eval_set),
        "adapter": {"source": source, "step": adapter_step},
        "metrics": {
            "initial_eval_loss": result.initial_eval_loss,
            "final_eval_loss": result.final_eval_loss,
            "best_step": result.best_step,
            "best_eval_loss": result.best_eval_loss,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "resumed_from_step": result.resumed_from_step,
            "train_tokens": result.train_tokens,
            "seconds": result.seconds,
            "timings": dict(result.timings),
            "final_train_loss": result.train_losses[-1] if result.train_losses else math.nan,
        },
        "checkpoints": [p.name for p in result.checkpoints],
        "versions": library_versions(),
    }
