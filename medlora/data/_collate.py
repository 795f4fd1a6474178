"""Batches for the training loop: right-padded, with padding masked by position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from medlora.data._tokenize import IGNORE_INDEX, TokenizedExample

if TYPE_CHECKING:
    import torch


def collate(examples: Sequence[TokenizedExample], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into ``input_ids``, ``attention_mask`` and ``labels`` of shape (batch, seq).

    Padding positions get ``pad_id`` (EOS for TinyLlama), attention 0 and label ``-100``: they
    are told apart by position, so real EOS labels survive.
    """
    import torch

    width = max(len(e) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
