"""Which examples each process trains on at each step, and the seeded order they come in."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from medlora._errors import TrainingError


class ExampleOrder:
    """Endless, seeded, epoch-wise shuffled example order (its state is checkpointed)."""

    def __init__(self, n: int, *, seed: int) -> None:
        self.n, self.rng, self.queue = n, random.Random(seed), list[int]()

    def take(self, k: int) -> list[int]:
        """The next ``k`` example indices."""
        out: list[int] = []
        while len(out) < k:
            if not self.queue:
                self.queue = list(range(self.n))
                self.rng.shuffle(self.queue)
            out.append(self.queue.pop())
        return out

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the order exactly."""
        return {"n": self.n, "rng": self.rng.getstate(), "queue": list(self.queue)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (of an order over as many examples)."""
        if state["n"] != self.n:
            raise TrainingError(
                f"the checkpoint was made with {state['n']} training examples, this run has "
                f"{self.n}: resume with the same data and max_seq_len, or set resume: false."
            )
        self.rng.setstate(tuple(state["rng"]) if isinstance(state["rng"], list) else state["rng"])
        self.queue = list(state["queue"])


def step_batches(
    order: ExampleOrder,
    items: Sequence[Any],
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    collate_fn: Callable[[list[Any]], dict[str, Any]],
    acc: Any,
) -> list[dict[str, Any]]:
    """This process's micro-batches for one optimizer step.

    ``items`` are training examples, or packed rows of them; ``collate_fn`` turns a list of
    items into tensors (plus an ``input_tokens`` count of real tokens). Every process draws the
    same ``micro x accum x processes`` indices and takes its slice of each micro-batch, so N
    processes see exactly what one process with N times the micro-batch would see.
    """
    world, rank = acc.num_processes, acc.process_index
    chosen = [items[i] for i in order.take(micro_batch_size * grad_accum_steps * world)]
    out = []
    for j in range(grad_accum_steps):
        start = (j * world + rank) * micro_batch_size
        batch = collate_fn(chosen[start : start + micro_batch_size])
        out.append({k: v.to(acc.device) if hasattr(v, "to") else v for k, v in batch.items()})
    return out
