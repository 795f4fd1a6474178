"""Next-token loss over supervised tokens, and the one micro-batch training step.

The chunked loss runs the model up to its final hidden states, keeps only the positions
whose next token is supervised, and applies ``lm_head`` + cross-entropy to ``chunk_tokens``
of them at a time under activation checkpointing: the float32 (batch, seq, vocab) logits
(2 GiB for 8 x 2048 x 32,000) are never held whole, and prompt positions cost no head matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medlora.data._tokenize import IGNORE_INDEX

Batch = Mapping[str, Any]
"""``input_ids``, ``labels``, ``attention_mask`` (and optionally ``position_ids`` for packed
rows), each a (batch, seq) tensor on the model's device."""


def supervised_tokens(batch: Batch) -> int:
    """How many positions of ``batch`` have a supervised next token."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum().item())


def _model_inputs(batch: Batch) -> dict[str, Any]:
    keys = ("input_ids", "attention_mask", "position_ids")
    return {k: batch[k] for k in keys if batch.get(k) is not None}


def _chunk_ce(head: Any, hidden: Any, target: Any) -> Any:
    import torch

    logits = head(hidden).float()  # (chunk, vocab)
    return torch.nn.functional.cross_entropy(logits, target, reduction="sum")


def causal_lm_loss(model: Any, head: Any, batch: Batch, *, chunk_tokens: int) -> tuple[Any, int]:
    """Summed next-token cross-entropy over supervised positions, and their count.

    Args:
        model: The (possibly DDP-wrapped) causal LM.
        head: Its output projection (``lm_head``), used when ``chunk_tokens > 0``.
        batch: See :data:`Batch`.
        chunk_tokens: Supervised tokens per head/loss chunk; 0 computes full logits.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    labels = batch["labels"][:, 1:]  # (batch, seq-1)
    mask = labels != IGNORE_INDEX
    n = int(mask.sum().item())
    if chunk_tokens <= 0:
        logits = model(**_model_inputs(batch)).logits[:, :-1, :].float()  # (batch, seq-1, vocab)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return loss, n
    out = model(**_model_inputs(batch), output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1][:, :-1, :][mask]  # (n, hidden): final-normed states
    target = labels[mask]  # (n,)
    loss = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            loss = loss + checkpoint(
                _chunk_ce, head, hidden[part], target[part], use_reentrant=False
            )
        else:
            loss = loss + _chunk_ce(head, hidden[part], target[part])
    return loss, n


def train_micro_step(
    model: Any,
    head: Any,
    batch: Batch,
    *,
    scale: float,
    chunk_tokens: int,
    backward: Callable[[Any], None],
) -> tuple[float, int]:
    """Forward and backward one micro-batch; gradients accumulate into the adapters.

    ``scale`` turns this batch's summed loss into its share of the step's mean: world size
    over the supervised tokens of the whole step on every process (DDP averages gradients).
    Returns the summed loss and the supervised-token count of this batch.
    """
    loss_sum, n = causal_lm_loss(model, head, batch, chunk_tokens=chunk_tokens)
    backward(loss_sum * scale)
    return float(loss_sum.item()), n
