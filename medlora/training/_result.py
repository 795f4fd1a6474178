"""TrainingResult: what a finished run produced and measured."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import attrs


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
