"""Token files of an :class:`~medlora.data.ArrowDataset`: tokenizing and packing one record
batch (or packing window) at a time, and the prepared rows read back lazily."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import DatasetError
from medlora._optional import require
from medlora.data._arrow_io import (
    RowWriter,
    arrow_writer,
    pyarrow_module,
    read_batches,
    token_schema,
)
from medlora.data._dataset import relocate
from medlora.data._formats import jsonl_line
from medlora.data._pack import PackingReport, pack_examples
from medlora.data._prepare import Truncation, tokenize_all
from medlora.data._tokenize import TokenizedExample


def tokenize_file(
    tokenizer: Any,
    records: Path,
    target: Path,
    *,
    source: str,
    bar: Any,
    max_seq_len: int,
    assistant_only: bool,
    truncation: Truncation,
) -> tuple[int, int, int]:
    """Examples written to ``target``, truncated, dropped (``ClinicalDataset.prepare``'s
    rules); a template problem names the record's file line."""
    truncated = dropped = 0
    with arrow_writer(target, token_schema(False)) as out:
        for batch in read_batches(records):
            conversations = [json.loads(m) for m in batch.column("messages").to_pylist()]
            try:
                kept, t, d = tokenize_all(
                    tokenizer, conversations, max_seq_len=max_seq_len,
                    assistant_only=assistant_only, truncation=truncation,
                )  # fmt: skip
            except DatasetError as exc:
                relocate(exc, batch.column("index").to_pylist(), source, jsonl_line)
                raise type(exc)(list(exc.problems), hint=exc.hint) from None
            truncated, dropped = truncated + t, dropped + d
            for e in kept:
                out.add(input_ids=e.input_ids, labels=e.labels, truncated=e.truncated)
            out.flush()
            bar.update(len(conversations))
    return out.rows, truncated, dropped


def pack_file(examples: Path, target: Path, max_seq_len: int, window: int) -> PackingReport:
    """Pack the examples of ``examples`` window by window into rows written to ``target``."""
    pa = pyarrow_module()
    totals = [0, 0, 0]
    with arrow_writer(target, token_schema(True)) as out:
        pending: list[Any] = []
        for batch in read_batches(examples):
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= window:
                _pack_window(pa.Table.from_batches(pending), out, max_seq_len, totals)
                pending = []
        if pending:
            _pack_window(pa.Table.from_batches(pending), out, max_seq_len, totals)
    return PackingReport(
        examples=totals[0], bins=totals[1], tokens=totals[2], max_seq_len=max_seq_len
    )


def _pack_window(table: Any, out: RowWriter, max_seq_len: int, totals: list[int]) -> None:
    """Best-fit-decreasing bins of one window of examples, written as one record batch."""
    import numpy as np

    pa = pyarrow_module()
    if not table.num_rows:
        return
    table = table.combine_chunks()
    ids_col, labels_col = table.column("input_ids").chunk(0), table.column("labels").chunk(0)
    offsets = ids_col.offsets.to_numpy()
    lengths = np.diff(offsets)
    bins, report = pack_examples(lengths.tolist(), max_seq_len)
    order = pa.array(np.fromiter((i for b in bins for i in b), np.int64, len(lengths)))
    sizes = np.array([len(b) for b in bins], dtype=np.int64)
    in_order = lengths[order.to_numpy()]
    row_tokens = np.add.reduceat(in_order, np.cumsum(sizes) - sizes)
    row_offsets = pa.array(np.concatenate([[0], np.cumsum(row_tokens)]), pa.int32())
    size_offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32())
    columns = [
        pa.ListArray.from_arrays(row_offsets, ids_col.take(order).flatten()),
        pa.ListArray.from_arrays(row_offsets, labels_col.take(order).flatten()),
        pa.ListArray.from_arrays(size_offsets, pa.array(in_order, pa.int32())),
    ]
    out.writer.write_batch(pa.record_batch(columns, schema=out.schema))
    out.rows += len(bins)
    totals[0] += report.examples
    totals[1] += report.bins
    totals[2] += report.tokens


@attrs.frozen(kw_only=True)
class ArrowPrepared:
    """Tokenized (optionally packed) examples in an Arrow file: ``ArrowDataset.prepare``."""

    path: Path
    """Packed rows (``input_ids``, ``labels``, example ``lengths``) or examples
    (``input_ids``, ``labels``, ``truncated``); ``datasets.Dataset.from_file`` opens it."""
    packed: bool
    """Whether :attr:`path` holds packed rows."""
    rows: int
    """Rows in :attr:`path`."""
    examples: int
    """Examples kept."""
    truncated: int
    """Examples cut to ``max_seq_len``."""
    dropped: int
    """Examples dropped (too long with ``truncation="drop"``, or no supervised token)."""
    packing: PackingReport | None
    """Packing efficiency, when packed."""
    cache_key: str
    """Hash of data fingerprint, tokenizer and settings."""
    from_cache: bool = False
    """Whether this came from the cache."""

    @classmethod
    def from_meta(
        cls, path: Path, meta: Mapping[str, Any], *, from_cache: bool = True
    ) -> ArrowPrepared:
        """Read back what :meth:`ArrowDataset.prepare` wrote beside ``path``."""
        packing = meta["packing"]
        return cls(
            path=path, packed=meta["packed"], rows=meta["rows"], examples=meta["examples"],
            truncated=meta["truncated"], dropped=meta["dropped"],
            packing=None if packing is None else PackingReport(**packing),
            cache_key=meta["cache_key"], from_cache=from_cache,
        )  # fmt: skip

    def to_hf(self) -> Any:
        """The rows as a memory-mapped ``datasets.Dataset``."""
        datasets = require("datasets", "ArrowPrepared.to_hf")
        return datasets.Dataset.from_file(str(self.path))

    def items(self) -> ArrowRows:
        """The rows, read lazily: packed rows as lists of :class:`TokenizedExample`, else one
        :class:`TokenizedExample` each (what ``PreparedData.rows()`` / ``.examples`` hold)."""
        return ArrowRows(self.to_hf(), packed=self.packed)

    def lengths(self) -> list[int]:
        """Token count of every example, read one batch at a time."""
        column = "lengths" if self.packed else "input_ids"
        out: list[int] = []
        for batch in read_batches(self.path):
            values = batch.column(column)
            out.extend((values.flatten() if self.packed else _list_lengths(values)).to_pylist())
        return out


def _list_lengths(values: Any) -> Any:
    import pyarrow.compute as pc

    return pc.list_value_length(values)


class ArrowRows(Sequence[Any]):
    """Random access to the rows of a prepared Arrow file, built into examples on demand."""

    def __init__(self, table: Any, *, packed: bool) -> None:
        self.table, self.packed = table, packed

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            raise TypeError("ArrowRows takes one integer index")
        row = self.table[index]
        if not self.packed:
            return TokenizedExample(
                input_ids=tuple(row["input_ids"]),
                labels=tuple(row["labels"]),
                truncated=row["truncated"],
            )
        out, at = [], 0
        for n in row["lengths"]:
            out.append(
                TokenizedExample(
                    input_ids=tuple(row["input_ids"][at : at + n]),
                    labels=tuple(row["labels"][at : at + n]),
                )
            )
            at += n
        return out
