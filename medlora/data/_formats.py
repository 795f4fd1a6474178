"""Readers for each source format: rows with their location, plus the problems found reading.

JSONL is scanned line by line (so a bad line is reported with its number); CSV and Parquet go
through ``datasets``' builders into a memory-mapped Arrow table (under ``cache_dir``) and are
read back in batches; JSON documents (an array, ``{"data": [...]}`` as in ACI-Bench, or
PubMedQA's ``ori_pqal.json`` keyed by PMID) are parsed whole, as JSON cannot be streamed by line.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medlora._errors import DatasetError, DatasetProblem
from medlora._optional import require

Row = tuple[int, Any]
# Columns that a CSV cell may hold as JSON text.
_NESTED = ("messages", "conversations", "options", "contexts")


def check_file(path: Path) -> None:
    """Raise a located DatasetError for a missing or empty file."""
    if not path.is_file():
        raise DatasetError([DatasetProblem("file does not exist", path=path)])
    if path.stat().st_size == 0:
        raise DatasetError([DatasetProblem("file is empty", path=path)], hint="Nothing to load.")


def read_jsonl(path: Path) -> tuple[list[Row], list[DatasetProblem]]:
    """Rows keyed by 0-based line index, and a problem for each undecodable line."""
    problems: list[DatasetProblem] = []
    rows = list(iter_jsonl(path, problems))
    return rows, problems


def iter_jsonl(path: Path, problems: list[DatasetProblem]) -> Iterator[Row]:
    """Rows keyed by 0-based line index, read one line at a time; a problem for each
    undecodable line is appended to ``problems``."""
    check_file(path)
    with path.open("rb") as handle:
        for index, raw_line in enumerate(handle):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(
                    DatasetProblem(
                        f"is not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8",
                        path=path,
                        record_index=index,
                    )
                )
                continue
            if not line.strip():
                continue
            try:
                yield index, json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(
                    DatasetProblem(
                        f"is not valid JSON ({exc.msg} at column {exc.colno})",
                        path=path,
                        record_index=index,
                    )
                )


def read_json(path: Path) -> list[Row]:
    """Records of a JSON document: an array, ``{"data": [...]}``, or PubMedQA's PMID mapping."""
    check_file(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(
            [DatasetProblem(f"not valid UTF-8 (byte {exc.start}); re-save as UTF-8", path=path)]
        ) from None
    except json.JSONDecodeError as exc:
        raise DatasetError(
            [
                DatasetProblem(
                    f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                    path=path,
                )
            ]
        ) from None
    if isinstance(doc, Mapping) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    elif (
        isinstance(doc, Mapping)
        and doc
        and all(isinstance(v, Mapping) and "QUESTION" in v for v in doc.values())
    ):
        doc = [{"id": str(pmid), **value} for pmid, value in doc.items()]
    if not isinstance(doc, list):
        raise DatasetError(
            [
                DatasetProblem(
                    'expected an array of records, {"data": [...]}, or an object '
                    "keyed by id (PubMedQA ori_pqal.json)",
                    path=path,
                )
            ]
        )
    return list(enumerate(doc))


Locate = Callable[[int], str]


def jsonl_line(index: int) -> str:
    """Location of JSONL row ``index`` (its 0-based line index): the 1-based line."""
    return f"line {index + 1}"


def array_index(index: int) -> str:
    """Location of element ``index`` of a JSON array."""
    return f"index {index}"


def table_row(index: int) -> str:
    """Location of row ``index`` of a Parquet file or ``datasets`` table."""
    return f"row {index}"


def in_memory(index: int) -> str:
    """Location of record ``index`` of records given in Python."""
    return f"record {index}"


def csv_lines(path: Path) -> Locate:
    """Location of CSV data row ``index``: the 1-based file line it starts on (quoted cells
    may span lines; blank lines are skipped, as the reader does). The file is scanned only
    when a problem is reported."""
    starts: list[int] = []

    def locate(index: int) -> str:
        if not starts:
            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                reader, previous = csv.reader(handle), 0
                for row in reader:
                    if row:
                        starts.append(previous + 1)
                    previous = reader.line_num
        data = starts[1:]  # after the header
        return f"line {data[index]}" if index < len(data) else f"row {index}"

    return locate


def _decode_nested(row: dict[str, Any]) -> dict[str, Any]:
    for key in _NESTED:
        value = row.get(key)
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(json.JSONDecodeError):
                row[key] = json.loads(value)
    return row


def iter_arrow(table: Any, *, batch_size: int = 1000) -> Iterator[Row]:
    """Rows of a ``datasets.Dataset`` read in batches (the table itself stays memory-mapped)."""
    index = 0
    for batch in table.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            yield index, _decode_nested(dict(zip(columns, values, strict=True)))
            index += 1


def load_arrow(path: Path, fmt: str, cache_dir: str | Path | None) -> Any:
    """A memory-mapped ``datasets.Dataset`` built from a CSV or Parquet file."""
    check_file(path)
    datasets = require("datasets", f"ClinicalDataset.from_{fmt}")
    loader = datasets.Dataset.from_csv if fmt == "csv" else datasets.Dataset.from_parquet
    try:
        return loader(str(path), cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__
        what = (
            "is not valid UTF-8; re-save it as UTF-8"
            if isinstance(cause, UnicodeDecodeError)
            else f"cannot be read as {fmt.upper()} ({type(exc).__name__}: {str(exc)[:200]})"
        )
        raise DatasetError([DatasetProblem(what, path=path)]) from exc


def load_hf(data: Any, split: str) -> Any:
    """A ``datasets.Dataset`` from a Dataset, a DatasetDict (``split``) or a save_to_disk dir."""
    datasets = require("datasets", "ClinicalDataset.from_hf")
    if isinstance(data, (str, Path)):
        if not Path(data).exists():
            raise DatasetError([DatasetProblem("directory does not exist", path=data)])
        try:
            data = datasets.load_from_disk(str(data))
        except Exception as exc:
            raise DatasetError(
                [DatasetProblem(f"not a datasets save_to_disk directory ({exc})", path=data)]
            ) from exc
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DatasetError(f"split {split!r} is not in the DatasetDict; it has {sorted(data)}")
        data = data[split]
    if not isinstance(data, datasets.Dataset):
        raise DatasetError(f"expected a datasets.Dataset or DatasetDict, got {type(data).__name__}")
    return data
