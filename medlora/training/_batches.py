"""Which examples each process trains on at each step, and the seeded order they come in.

Batches are collated one step ahead on a worker thread (pinned memory on CUDA), with the
step's token counts taken from the examples themselves, so the loop never waits for
collation and never asks the device for a count.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from medlora._errors import TrainingError
from medlora.training._loss import item_counts, with_loss_index


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


@attrs.frozen(kw_only=True)
class StepBatches:
    """One optimizer step's micro-batches for this process, with the step's counts."""

    micro: list[dict[str, Any]]
    """CPU tensors (pinned on CUDA) per micro-batch: see :data:`medlora.training._loss.Batch`."""
    supervised: int
    """Supervised next tokens of the whole step, over all processes."""
    input_tokens: int
    """Real (non-padding) tokens of the whole step, over all processes."""


class StepLoader:
    """Draws each step's items on the caller's thread, collates them on a worker thread one
    step ahead, and remembers the order's state as of the steps handed out (for checkpoints).

    Every process draws the same ``micro x accum x processes`` indices and takes its slice of
    each micro-batch, so N processes see exactly what one process with N times the micro-batch
    would see, and each knows the step's global counts without communicating.
    """

    def __init__(
        self,
        order: ExampleOrder,
        items: Sequence[Any],
        *,
        micro_batch_size: int,
        grad_accum_steps: int,
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        world: int = 1,
        rank: int = 0,
        pin: bool = False,
    ) -> None:
        self.order, self.items, self.collate_fn = order, items, collate_fn
        self.micro_batch_size, self.grad_accum_steps = micro_batch_size, grad_accum_steps
        self.world, self.rank, self.pin = world, rank, pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlora-collate")
        self._next: tuple[Future[StepBatches], dict[str, Any]] | None = None
        self._state = order.state()

    def _submit(self) -> tuple[Future[StepBatches], dict[str, Any]]:
        k = self.micro_batch_size * self.grad_accum_steps * self.world
        chosen = [self.items[i] for i in self.order.take(k)]
        return self._pool.submit(self._build, chosen), self.order.state()

    def _build(self, chosen: list[Any]) -> StepBatches:
        counts = [item_counts(item) for item in chosen]
        micro = []
        for j in range(self.grad_accum_steps):
            start = (j * self.world + self.rank) * self.micro_batch_size
            batch = with_loss_index(self.collate_fn(chosen[start : start + self.micro_batch_size]))
            if self.pin:
                batch = {
                    k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in batch.items()
                }
            micro.append(batch)
        return StepBatches(
            micro=micro,
            supervised=sum(c[0] for c in counts),
            input_tokens=sum(c[1] for c in counts),
        )

    def next(self) -> StepBatches:
        """This step's batches; the next step's start collating at once."""
        if self._next is None:
            self._next = self._submit()
        future, state = self._next
        step = future.result()
        self._state = state
        self._next = self._submit()
        return step

    def state(self) -> dict[str, Any]:
        """The order's state after the last step handed out (what a checkpoint keeps)."""
        return self._state

    def close(self) -> None:
        """Stop the worker thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """Copy a batch's tensors to ``device`` without blocking the host (from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def with_varlen_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """Add FlashAttention's variable-length arguments for a packed batch, from its
    ``position_ids`` (each example starts at 0), computed here on the CPU.

    transformers' FlashAttention reads packed ``position_ids`` only for a batch of one row,
    and then infers these in every layer with a device sync; given, they cover any number of
    rows (the (batch x seq) tokens flattened) and cost nothing on the device.
    """
    import torch

    flat = batch["position_ids"].reshape(-1)  # (batch * seq,)
    starts = (flat == 0).nonzero().reshape(-1)
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)  # (examples + 1,)
    longest = int((cu[1:] - cu[:-1]).max())
    batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return batch
