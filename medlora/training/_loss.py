"""Next-token loss targets, counted and indexed on the CPU before a batch moves.

A batch names its supervised positions up front: ``loss_positions`` (flat indices into the
(batch x seq) hidden states whose next token is supervised) and ``loss_targets`` (those next
tokens). The loss itself (:mod:`medlora.training._objective`) then needs no boolean indexing
and no count read back from the device; the count is the tensor's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medlora.data import IGNORE_INDEX, TokenizedExample

Batch = Mapping[str, Any]
"""``input_ids`` (batch, seq), ``loss_positions`` (n,), ``loss_targets`` (n,), and
``attention_mask`` (batch, seq) for padded rows or ``position_ids`` (batch, seq) for packed
ones."""


def item_counts(item: TokenizedExample | Sequence[TokenizedExample]) -> tuple[int, int]:
    """Supervised next tokens and tokens of one example or packed row (pure Python)."""
    examples = [item] if isinstance(item, TokenizedExample) else item
    labels = [label for e in examples for label in e.labels]
    return sum(label != IGNORE_INDEX for label in labels[1:]), len(labels)


def with_loss_index(batch: dict[str, Any]) -> dict[str, Any]:
    """Replace a collated batch's (CPU) ``labels`` by ``loss_positions`` and ``loss_targets``;
    drop an all-ones ``attention_mask`` (no padding), so attention can run plain causal."""
    labels = batch.pop("labels")  # (batch, seq)
    width = labels.shape[1]
    following = labels[:, 1:]  # (batch, seq-1): the token each position predicts
    rows, cols = (following != IGNORE_INDEX).nonzero(as_tuple=True)
    batch["loss_positions"] = rows * width + cols  # (n,) into the flattened (batch, seq)
    batch["loss_targets"] = following[rows, cols]  # (n,)
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2 and bool(mask.all()):
        del batch["attention_mask"]
    return batch


def supervised_tokens(batch: Batch) -> int:
    """How many positions of ``batch`` have a supervised next token (no device read)."""
    if "loss_targets" in batch:
        return int(batch["loss_targets"].shape[0])
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def causal_lm_loss(
    model: Any, batch: Batch, *, chunk_tokens: int, impl: str = "chunked"
) -> tuple[Any, int]:
    """Summed next-token cross-entropy over the supervised positions of ``batch``, and their
    count. ``model`` is a causal LM (peft-wrapped or not) or a ``CausalLMLoss``; a batch with
    ``labels`` instead of a loss index gets one (on the labels' device)."""
    from medlora.training._objective import CausalLMLoss

    objective = (
        model
        if isinstance(model, CausalLMLoss)
        else CausalLMLoss(model, impl=impl, chunk_tokens=chunk_tokens)
    )
    inputs = dict(batch)
    if "loss_targets" not in inputs:
        inputs = with_loss_index(inputs)
    return objective(**inputs), int(inputs["loss_targets"].shape[0])
