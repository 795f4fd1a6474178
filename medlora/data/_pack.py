"""Packing: several examples per row, each attending only to itself.

Examples are placed into ``max_seq_len`` bins by best-fit-decreasing (longest first, each into
the fullest bin that still has room). A packed row carries ``position_ids`` that restart at 0 for
every example and no attention mask: transformers 5 (``attention_mask=None``) finds the example
boundaries from ``position_ids`` and builds the block-diagonal causal mask itself, on the
device (SDPA, eager), as a block mask that skips masked blocks (flex_attention), or runs
FlashAttention variable-length. For attention code that cannot read ``position_ids``,
``dense_mask=True`` adds a 4-D boolean ``(batch, 1, seq, seq)`` mask built here (the fallback).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from medlora._errors import DatasetError
from medlora.data._tokenize import IGNORE_INDEX, TokenizedExample

if TYPE_CHECKING:
    import torch


@attrs.frozen(kw_only=True)
class PackingReport:
    """How well examples filled their bins."""

    examples: int
    """Examples packed."""
    bins: int
    """Rows produced."""
    tokens: int
    """Real (non-padding) tokens in all rows."""
    max_seq_len: int
    """Capacity of one row."""

    @property
    def efficiency(self) -> float:
        """Real tokens / (rows x ``max_seq_len``): 1.0 means no padding at all."""
        return self.tokens / (self.bins * self.max_seq_len) if self.bins else 0.0


def pack_examples(
    lengths: Sequence[int], max_seq_len: int
) -> tuple[list[list[int]], PackingReport]:
    """Group example indices into bins of at most ``max_seq_len`` tokens (best-fit-decreasing).

    Args:
        lengths: Token count of each example; none may exceed ``max_seq_len``.
        max_seq_len: Capacity of a bin.

    Returns:
        The bins (lists of example indices, longest first within a bin) and a report.
    """
    too_long = [i for i, n in enumerate(lengths) if n > max_seq_len]
    if too_long:
        raise DatasetError(
            f"{len(too_long)} examples (first: {too_long[0]}) are longer than max_seq_len="
            f"{max_seq_len}; tokenize with the same max_seq_len before packing"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # (remaining capacity, bin index), kept sorted: the best fit is the first with room >= n.
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            room, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_seq_len - n, len(bins) - 1))
    report = PackingReport(
        examples=len(lengths), bins=len(bins), tokens=sum(lengths), max_seq_len=max_seq_len
    )
    return bins, report


def collate_packed(
    rows: Sequence[Sequence[TokenizedExample]],
    *,
    pad_id: int,
    width: int | None = None,
    dense_mask: bool = False,
) -> dict[str, torch.Tensor]:
    """Tensors for packed rows, each row a sequence of examples laid end to end.

    Returns ``input_ids``, ``labels`` and ``position_ids`` (batch, seq); ``position_ids``
    restart at 0 for every example, and the padding at a row's end counts as one more
    example (it never attends to a real token, nor a real token to it). Pass the dict to a
    transformers 5 Llama as keyword arguments (no ``attention_mask``).

    Args:
        rows: Examples per row (e.g. ``[[examples[i] for i in b] for b in bins]``).
        pad_id: Token id for padding (EOS for TinyLlama; told apart by position).
        width: Row length; defaults to the longest row.
        dense_mask: Also return ``attention_mask`` (batch, 1, seq, seq), boolean, ``True``
            where a query token may attend to a key token: the causal triangle of its own
            example (padding attends only to itself). Only for attention code that cannot
            separate examples by ``position_ids``; it rules out FlashAttention kernels.
    """
    import torch

    lengths = [sum(len(e) for e in row) for row in rows]
    width = width or max(lengths)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    segment = torch.full((batch, width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, example in enumerate(row):
            n = len(example)
            input_ids[r, at : at + n] = torch.tensor(example.input_ids)
            labels[r, at : at + n] = torch.tensor(example.labels)
            position_ids[r, at : at + n] = torch.arange(n)
            segment[r, at : at + n] = s
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if not dense_mask:
        return out
    same = segment[:, :, None] == segment[:, None, :]  # (batch, seq, seq)
    real = (segment >= 0)[:, :, None]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    eye = torch.eye(width, dtype=torch.bool)
    mask = (same & real & causal) | eye  # padding: only itself
    out["attention_mask"] = mask[:, None, :, :]
    return out
