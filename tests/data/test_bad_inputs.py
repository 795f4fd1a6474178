"""A corpus of bad files: each raises one DatasetError naming file, record/line and field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from medlora import ClinicalDataset, DatasetError

GOOD = json.dumps({"question": "Normal SpO2?", "answer": "95-100%."})
# name -> (file contents, loader, expected [(record_index, field, message fragment)])
Case = tuple[bytes, str, list[tuple[int | None, str | None, str]]]
CORPUS: dict[str, Case] = {
    "empty.jsonl": (b"", "jsonl", [(None, None, "file is empty")]),
    "blank_lines.jsonl": (b"\n\n  \n", "jsonl", [(None, None, "no usable records")]),
    "invalid_json.jsonl": (f"{GOOD}\n{{oops\n".encode(), "jsonl", [(1, None, "not valid JSON")]),
    "not_utf8.jsonl": (
        GOOD.encode() + b"\n" + b'{"text": "caf\xe9"}\n',
        "jsonl",
        [(1, None, "not valid UTF-8")],
    ),
    "missing_answer.jsonl": (
        b'{"question": "Q?", "answer": null}\n',
        "jsonl",
        [(0, "answer", "missing")],
    ),
    "empty_field.jsonl": (
        b'{"question": "  ", "answer": "A."}\n',
        "jsonl",
        [(0, "question", "empty")],
    ),
    "wrong_type.jsonl": (
        b'{"question": 42, "answer": "A."}\n',
        "jsonl",
        [(0, "question", "must be a string")],
    ),
    "unknown_role.jsonl": (
        b'{"messages": [{"role": "doctor", "content": "Hi"}]}\n',
        "jsonl",
        [(0, "messages[0].role", "unknown role")],
    ),
    "no_assistant.jsonl": (
        b'{"messages": [{"role": "user", "content": "Hi"}]}\n',
        "jsonl",
        [(0, "messages", "no assistant turn")],
    ),
    "not_object.jsonl": (b"[1, 2]\n", "jsonl", [(0, None, "must be a JSON object")]),
    "unknown_layout.jsonl": (b'{"foo": "bar"}\n', "jsonl", [(0, None, "layout not recognised")]),
    "bad_option.jsonl": (
        b'{"question": "Q?", "options": ["a", "b"], "answer": "E"}\n',
        "jsonl",
        [(0, "answer", "option keys")],
    ),
    "sharegpt_role.jsonl": (
        b'{"conversations": [{"from": "bot", "value": "x"}]}\n',
        "jsonl",
        [(0, "conversations[0].from", "unknown role")],
    ),
    "mixed.jsonl": (
        f'{GOOD}\n{{bad\n{{"question": "Q?", "answer": ""}}\n'.encode(),
        "jsonl",
        [(1, None, "not valid JSON"), (2, "answer", "empty")],
    ),
    "bad.json": (b'{"data": [', "json", [(None, None, "not valid JSON")]),
    "scalar.json": (b'"just a string"', "json", [(None, None, "expected an array")]),
    "aci_missing_tgt.json": (
        b'{"data": [{"src": "Doctor: hi", "file": "x"}]}',
        "json",
        [(0, "summary", "missing")],
    ),
    "empty.csv": (b"", "csv", [(None, None, "file is empty")]),
    "missing_cell.csv": (b"question,answer\nQ1?,A1\nQ2?,\n", "csv", [(1, "answer", "missing")]),
    "pubmedqa_bad.json": (
        b'{"123": {"QUESTION": "Q?", "CONTEXTS": ["c"], "final_decision": "x"}}',
        "json",
        [(0, "final_decision", "must be one of")],
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_file_names_the_error_and_its_location(tmp_path: Path, name: str) -> None:
    data, fmt, expected = CORPUS[name]
    path = tmp_path / name
    path.write_bytes(data)
    loader: Callable[..., ClinicalDataset] = getattr(ClinicalDataset, f"from_{fmt}")
    aci = {"field_map": {"src": "note", "tgt": "summary"}, "kind": "summarization"}
    kwargs: dict[str, object] = dict(aci) if name.startswith("aci") else {}
    if fmt == "csv":
        kwargs["cache_dir"] = str(tmp_path / "cache")
    with pytest.raises(DatasetError) as info:
        loader(path, **kwargs)
    problems = info.value.problems
    got = [(p.record_index, p.field) for p in problems]
    assert got == [(i, f) for i, f, _ in expected], str(info.value)
    for problem, (_, _, fragment) in zip(problems, expected, strict=True):
        assert fragment in problem.message
        assert problem.path == str(path)


def test_corpus_has_at_least_fifteen_files() -> None:
    assert len(CORPUS) >= 15


def test_skip_keeps_going_and_reports_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(CORPUS["mixed.jsonl"][0])
    ds = ClinicalDataset.from_jsonl(path, on_error="skip")
    assert len(ds) == 1
    assert [(p.record_index, p.field) for p in ds.report.skipped] == [(1, None), (2, "answer")]


def _located(error: DatasetError) -> list[tuple[str | None, int | None]]:
    return [(p.location, p.record_index) for p in error.problems]


def _error(load: Callable[..., object], path: Path, **options: object) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load(path, **options)
    return info.value


def test_jsonl_names_the_1_based_line_of_every_kind_of_problem(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        GOOD.encode()
        + b"\n\n{oops\n"
        + b"[1, 2]\n"
        + b'{"question": "Q?", "answer": 3}\n'
        + b'{"text": "caf\xe9"}\n'
    )
    error = _error(ClinicalDataset.from_jsonl, path)
    assert _located(error) == [("line 3", 2), ("line 4", 3), ("line 5", 4), ("line 6", 5)]
    assert "record " not in str(error)  # one counting scheme per file: the editor's
    assert f"{path}, line 5, field 'answer': must be a string" in str(error)
    assert error.location == "line 3"


def test_csv_names_the_file_line_where_the_record_starts(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(
        'question,answer\n"Spans\ntwo lines?",yes\n\n"Q2?",ok\n"Q3?",\n', encoding="utf-8"
    )
    error = _error(ClinicalDataset.from_csv, path, cache_dir=tmp_path / "cache")
    assert _located(error) == [("line 6", 2)]
    assert f"{path}, line 6, field 'answer'" in str(error)


def test_json_arrays_name_the_index_and_parquet_the_row(tmp_path: Path) -> None:
    array = tmp_path / "a.json"
    array.write_text(json.dumps([json.loads(GOOD), {"question": "Q?", "answer": 1}]))
    assert _located(_error(ClinicalDataset.from_json, array)) == [("index 1", 1)]
    pandas = pytest.importorskip("pandas")
    table = tmp_path / "t.parquet"
    pandas.DataFrame({"question": ["a?", "b?", "c?"], "answer": ["x", None, "z"]}).to_parquet(table)
    error = _error(ClinicalDataset.from_parquet, table, cache_dir=tmp_path / "cache")
    assert _located(error) == [("row 1", 1)]
    assert f"{table}, row 1, field 'answer'" in str(error)


def test_phi_failures_name_the_line_of_the_record(tmp_path: Path) -> None:
    from medlora import PHIDetectedError

    path = tmp_path / "phi.jsonl"
    path.write_text(
        GOOD
        + "\n\n"
        + json.dumps({"question": "Patient: John Smith. Plan?", "answer": "Rest."})
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(PHIDetectedError) as info:
        ClinicalDataset.from_jsonl(path).deidentify(mode="fail")
    assert _located(info.value) == [("line 3", 2)]
