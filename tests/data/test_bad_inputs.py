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
