"""The training loop's state: the counters a checkpoint keeps, and the run's live objects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from medlora.training._batches import ExampleOrder
from medlora.training._datasets import RunData


@attrs.define(kw_only=True)
class LoopState:
    """Where the loop is: what a checkpoint's ``state.json`` holds and a resume restores."""

    step: int = 0
    """Optimizer steps taken."""
    tokens: int = 0
    """Supervised tokens seen."""
    input_tokens: int = 0
    """Input tokens seen (padding-free count of every position fed)."""
    losses: list[float] = attrs.field(factory=list)
    """Mean training loss of each step taken."""
    best_eval_loss: float = math.inf
    """Best held-out loss of the periodic evaluations (inf before the first)."""
    best_step: int | None = None
    """Step of :attr:`best_eval_loss`."""
    bad_evals: int = 0
    """Evaluations since the best one (early-stopping patience)."""
    initial_eval_loss: float = math.nan
    """Held-out loss before the first step."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``state.json``."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoopState:
        """Read back :meth:`to_dict` (keys it does not know are ignored)."""
        state = cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})
        if state.best_step is None:  # no evaluation yet: nothing to beat
            state.best_eval_loss = math.inf
        return state


@attrs.define(kw_only=True)
class Run:
    """The mutable objects of one training run, shared by the loop's steps."""

    acc: Any
    """The accelerate ``Accelerator``."""
    model: Any
    """The (DDP-wrapped or FSDP-sharded) :class:`CausalLMLoss`."""
    sharded: bool
    params: list[Any]
    optimizer: Any
    scheduler: Any
    scaler: Any
    order: ExampleOrder
    run_dir: Path
    data: RunData
    eval_examples: list[Any]
    """The held-out examples, tokenized (empty without held-out records)."""
    started: float
    """``time.perf_counter()`` when :meth:`QLoRATrainer.train` began."""
    state: LoopState = attrs.field(factory=LoopState)
    timings: dict[str, float] = attrs.field(
        factory=lambda: dict.fromkeys(("setup", "train", "eval", "save"), 0.0)
    )
    """Seconds spent in setup, steps, evaluation and saving."""
    resumed_from: int | None = None
    """The checkpoint step this run continued from."""
    loader: Any = None
    bar: Any = None
    jsonl: Any = None
    board: Any = None
    hooks: list[Any] = attrs.field(factory=list)
    """Loggers and user callbacks (main process only)."""
    last_saved: int = 0
    """Step of the latest checkpoint."""
    stopped_early: bool = False
    pending: list[tuple[int, Any, Any, int, float]] = attrs.field(factory=list)
    """Steps whose loss and gradient norm are still on the device."""

    @property
    def main(self) -> bool:
        """Whether this is the main process (it writes files and calls hooks)."""
        return bool(self.acc.is_main_process)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's optimizer state (a full, gathered state when sharded)."""
        if self.sharded:
            from medlora.training._sharding import load_optimizer_state

            load_optimizer_state(self.model, self.optimizer, state)
        else:
            self.optimizer.load_state_dict(state)

    def close(self) -> None:
        """Stop the loader's worker, the progress bar and the loggers."""
        self.loader.close()
        self.bar.close()
        for hook in (self.jsonl, self.board):
            if hook is not None:
                hook.close()
