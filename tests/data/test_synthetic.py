"""The shipped synthetic dataset: reproducible, well-formed, fictional identifiers in place."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from medlora.data._synthetic import (
    CONDITIONS,
    DEFAULT_PATH,
    TASK_COUNTS,
    generate_records,
    write_default,
)

TASKS = ("summarization", "diagnosis_qa", "patient_education", "multiple_choice")
EXTRA_KEYS = {
    "summarization": ["note", "summary"],
    "diagnosis_qa": ["question", "answer", "condition"],
    "patient_education": ["condition"],
    "multiple_choice": ["question", "options", "answer", "answer_text", "condition"],
}
IDENTIFIER_MARKERS = ("FAKE-", "555-01", "example.org", "MRN", "DOB", "Dr. ")


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return generate_records()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?=\s|$)", text))


def test_same_seed_same_records_and_other_seed_differs() -> None:
    assert generate_records(seed=7, n_per_task=8) == generate_records(seed=7, n_per_task=8)
    assert generate_records(seed=7, n_per_task=8) != generate_records(seed=8, n_per_task=8)


def test_n_per_task_sets_every_task_count() -> None:
    counts = Counter(r["task"] for r in generate_records(seed=3, n_per_task=5))
    assert counts == dict.fromkeys(TASKS, 5)


def test_shipped_file_is_exactly_the_generator_output(
    records: list[dict[str, Any]], tmp_path: Path
) -> None:
    shipped = DEFAULT_PATH.read_bytes()
    write_default(tmp_path / "regen.jsonl")
    assert (tmp_path / "regen.jsonl").read_bytes() == shipped
    lines = shipped.decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    assert len(shipped) < 600_000


def test_counts_per_task(records: list[dict[str, Any]]) -> None:
    counts = Counter(r["task"] for r in records)
    assert len(records) >= 300
    assert set(counts) == set(TASKS)
    assert all(counts[task] >= 60 for task in TASKS)
    assert counts == TASK_COUNTS


def test_layout_and_key_order(records: list[dict[str, Any]]) -> None:
    for number, record in enumerate(records, start=1):
        task = record["task"]
        assert list(record) == ["id", "task", "patient_id", "messages", *EXTRA_KEYS[task]]
        assert record["id"] == f"syn-{number:05d}"
        assert re.fullmatch(r"P-\d{4}", record["patient_id"])
        assert all(set(m) == {"role", "content"} for m in record["messages"])
        roles = [m["role"] for m in record["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        turns = len(roles) // 2
        assert roles == ["user", "assistant"] * turns
        assert turns == 1 or (task == "patient_education" and turns in (2, 3))


def test_ids_unique_and_no_empty_or_padded_strings(records: list[dict[str, Any]]) -> None:
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        for text in _strings(record):
            assert text and text == text.strip(), record["id"]


def test_some_records_have_no_system_turn(records: list[dict[str, Any]]) -> None:
    with_system = sum(r["messages"][0]["role"] == "system" for r in records)
    assert 0.7 * len(records) < with_system < len(records)


def test_summarization_is_consistent_and_identifiers_stay_in_the_note(
    records: list[dict[str, Any]],
) -> None:
    summaries = [r for r in records if r["task"] == "summarization"]
    for record in summaries:
        note, summary = record["note"], record["summary"]
        assert 80 <= len(note.split()) <= 200, record["id"]
        assert 2 <= _sentences(summary) <= 4, record["id"]
        assert note in record["messages"][-2]["content"]
        assert record["messages"][-1]["content"] == summary
        assert not any(marker in summary for marker in IDENTIFIER_MARKERS), record["id"]
        assessment = re.search(r"^Assessment: .*$", note, re.MULTILINE)
        assert assessment is not None
        named = [c.name for c in CONDITIONS if assessment.group(0).endswith(f" {c.name}.")]
        assert len(named) == 1 and named[0] in summary, record["id"]
        age = re.search(r"\d+-year-old (?:man|woman|boy|girl)", summary)
        assert age is not None and age.group(0) in note, record["id"]
        for temp in re.findall(r"fever to (\d+\.\d) C", summary):
            assert f"T {temp} C" in note, record["id"]
        for rate in re.findall(r"tachycardia at (\d+)/min", summary):
            assert f"HR {rate}," in note, record["id"]
    with_ids = [r for r in summaries if "FAKE-" in r["note"]]
    assert len(with_ids) >= len(summaries) // 3
    assert any("555-01" in r["note"] for r in with_ids)
    assert any("@example.org" in r["note"] for r in with_ids)
    assert all(re.search(r"MRN:? FAKE-\d{6}", r["note"]) for r in with_ids)


def test_identifiers_appear_only_in_summarization_notes(records: list[dict[str, Any]]) -> None:
    for record in records:
        if record["task"] != "summarization":
            text = "\n".join(_strings(record))
            assert not any(marker in text for marker in IDENTIFIER_MARKERS), record["id"]


def test_diagnosis_answers_name_the_condition_and_ask_for_confirmation(
    records: list[dict[str, Any]],
) -> None:
    for record in (r for r in records if r["task"] == "diagnosis_qa"):
        assert record["messages"][-2]["content"] == record["question"]
        assert record["messages"][-1]["content"] == record["answer"]
        first_line, confirm = record["answer"].split("\n")
        assert record["condition"].lower() in first_line.lower()
        assert "clinician" in confirm


def test_multiple_choice_options_and_balanced_letters(records: list[dict[str, Any]]) -> None:
    choices = [r for r in records if r["task"] == "multiple_choice"]
    for record in choices:
        options = record["options"]
        assert list(options) == ["A", "B", "C", "D"]
        assert len(set(options.values())) == 4
        assert options[record["answer"]] == record["answer_text"]
        shown = "\n".join(f"{k}. {v}" for k, v in options.items())
        assert record["messages"][-2]["content"] == f"{record['question']}\n{shown}"
        reply = record["messages"][-1]["content"]
        assert reply.startswith(f"{record['answer']}. {record['answer_text']}\n")
        assert _sentences(reply.split("\n", 1)[1]) == 1
    letters = Counter(r["answer"] for r in choices)
    assert max(letters.values()) - min(letters.values()) <= 1


def test_education_covers_many_conditions(records: list[dict[str, Any]]) -> None:
    education = [r for r in records if r["task"] == "patient_education"]
    assert len({r["condition"] for r in education}) >= 20


def test_synthetic_dataset_is_the_generator_grouped_by_patient() -> None:
    from medlora import ClinicalDataset

    assert ClinicalDataset.synthetic().fingerprint == ClinicalDataset.default().fingerprint
    dataset = ClinicalDataset.synthetic(seed=3, n_per_task=5)
    records = generate_records(seed=3, n_per_task=5)
    assert [r.id for r in dataset] == [r["id"] for r in records]
    assert [r.group for r in dataset] == [r["patient_id"] for r in records]
    assert dataset.records[0].source["task"] == records[0]["task"]


def test_the_tables_are_data_files_that_ship_with_the_package() -> None:
    """The generator reads its tables from YAML beside it, and every data file under
    ``medlora/`` is matched by a package-data glob (a wheel built with ``pip wheel .`` held
    ``data/synthetic/conditions.yaml``, ``phrases.yaml`` and ``data/default/*``)."""
    root = Path(__file__).resolve().parents[2]
    tables = root / "medlora" / "data" / "synthetic"
    conditions = yaml.safe_load((tables / "conditions.yaml").read_text(encoding="utf-8"))
    assert [c["name"] for c in conditions] == [c.name for c in CONDITIONS]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["medlora"]
    data_files = [
        p.relative_to(root / "medlora").as_posix()
        for p in (root / "medlora").rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    ]
    assert {"data/synthetic/conditions.yaml", "data/synthetic/phrases.yaml"} <= set(data_files)
    unshipped = [f for f in data_files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert unshipped == []
