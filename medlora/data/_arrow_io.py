"""Arrow stream files for :class:`~medlora.data.ArrowDataset`: schemas, a batched writer that
renames into place, a plain (not memory-mapped) batch reader, and the cache keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medlora._io import atomic_path
from medlora._optional import require
from medlora.data._validate import ClinicalRecord

BATCH = 2000
"""Records per Arrow record batch (and per tokenizer call)."""
CACHE_VERSION = 1
RECORD_COLUMNS = ("id", "kind", "messages", "group", "index", "source")


def pyarrow_module() -> Any:
    return require("pyarrow", "ArrowDataset")


def record_schema() -> Any:
    pa = pyarrow_module()
    return pa.schema(
        [
            ("id", pa.string()),
            ("kind", pa.string()),
            ("messages", pa.string()),
            ("group", pa.string()),
            ("index", pa.int64()),
            ("source", pa.string()),
        ]
    )


def token_schema(packed: bool) -> Any:
    pa = pyarrow_module()
    ids = [("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))]
    last = ("lengths", pa.list_(pa.int32())) if packed else ("truncated", pa.bool_())
    return pa.schema([*ids, last])


class RowWriter:
    """Rows appended one at a time, written as record batches of :data:`BATCH` rows."""

    def __init__(self, writer: Any, schema: Any) -> None:
        self.writer, self.schema = writer, schema
        self.columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        self.rows = 0

    def add(self, **values: Any) -> None:
        for name, column in self.columns.items():
            column.append(values[name])
        if len(self.columns[self.schema.names[0]]) >= BATCH:
            self.flush()

    def flush(self) -> None:
        n = len(self.columns[self.schema.names[0]])
        if n:
            arrays = [self.columns[name] for name in self.schema.names]
            self.writer.write_batch(pyarrow_module().record_batch(arrays, schema=self.schema))
            self.rows += n
            self.columns = {name: [] for name in self.schema.names}


@contextlib.contextmanager
def arrow_writer(target: Path, schema: Any) -> Iterator[RowWriter]:
    """An Arrow stream file at ``target``, there only once the block ends without error."""
    pa = pyarrow_module()
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_path(target) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as stream,
    ):
        out = RowWriter(stream, schema)
        yield out
        out.flush()


def read_batches(path: Path) -> Iterator[Any]:
    """The record batches of an Arrow stream file, one at a time, read (not memory-mapped)."""
    pa = pyarrow_module()
    with pa.OSFile(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def record_row(record: ClinicalRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "messages": json.dumps(list(record.messages)),
        "group": record.group,
        "index": record.index,
        "source": json.dumps(dict(record.source), default=str),
    }


def batch_records(batch: Any) -> list[ClinicalRecord]:
    """The :class:`ClinicalRecord` values of one record batch."""
    cols = batch.to_pydict()
    return [
        ClinicalRecord(
            id=rid,
            kind=kind,
            messages=tuple(json.loads(messages)),
            group=group,
            source=json.loads(source),
            index=index,
        )
        for rid, kind, messages, group, index, source in zip(
            *(cols[c] for c in RECORD_COLUMNS), strict=True
        )
    ]


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key_of(settings: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(total=total, desc=desc, disable=True)
    return tqdm(total=total, desc=desc, unit="rec", leave=False)  # TQDM_DISABLE=1 silences it


def default_cache_dir() -> Path:
    """``~/.cache/medlora/arrow``."""
    return Path.home() / ".cache" / "medlora" / "arrow"
