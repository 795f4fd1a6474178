"""ClinicalDataset: every source format, splits, hygiene, data card and the prepare cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medlora import ClinicalDataset

ROWS = [
    {"id": "a", "patient_id": "P1", "question": "Normal SpO2?", "answer": "95-100%."},
    {
        "id": "b",
        "patient_id": "P1",
        "instruction": "Expand.",
        "input": "SOB",
        "output": "Shortness of breath.",
    },
    {
        "id": "c",
        "patient_id": "P2",
        "question": "Iron test?",
        "options": ["Ferritin", "Lipase"],
        "answer": 0,
    },
]


def _views(ds: ClinicalDataset) -> list[tuple[str, str, Any]]:
    return [(r.id, r.kind, r.messages) for r in ds]


@pytest.fixture(scope="module")
def reference() -> ClinicalDataset:
    return ClinicalDataset.from_records(ROWS, group_by="patient_id")


def test_json_array_and_data_wrapper(tmp_path: Path, reference: ClinicalDataset) -> None:
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    for name in ("a.json", "b.json"):
        ds = ClinicalDataset.from_json(tmp_path / name, group_by="patient_id")
        assert _views(ds) == _views(reference)


def test_pubmedqa_ori_pqal_layout(tmp_path: Path) -> None:
    doc = {
        "2141": {
            "QUESTION": "Does X help?",
            "CONTEXTS": ["A trial."],
            "LABELS": ["RESULTS"],
            "MESHES": [],
            "LONG_ANSWER": "It did.",
            "final_decision": "yes",
        }
    }
    (tmp_path / "ori_pqal.json").write_text(json.dumps(doc))
    (r,) = ClinicalDataset.from_json(tmp_path / "ori_pqal.json")
    assert (r.id, r.kind, r.messages[-1]["content"]) == ("2141", "pubmedqa", "It did.\nAnswer: yes")


def test_csv_parquet_and_hf(tmp_path: Path, reference: ClinicalDataset) -> None:
    import datasets

    # Columns need one type each: options as JSON text, the letter instead of index 0.
    flat = [
        {**r, "options": json.dumps(r["options"]), "answer": "A"} if "options" in r else r
        for r in ROWS
    ]
    keys = sorted({k for r in flat for k in r})  # from_list takes columns from the first row
    table = datasets.Dataset.from_list([{k: r.get(k) for k in keys} for r in flat])
    table.to_csv(str(tmp_path / "d.csv"), index=False)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    cache = tmp_path / "cache"
    got = [
        ClinicalDataset.from_csv(tmp_path / "d.csv", cache_dir=cache, group_by="patient_id"),
        ClinicalDataset.from_parquet(
            tmp_path / "d.parquet", cache_dir=cache, group_by="patient_id"
        ),
        ClinicalDataset.from_hf(table, group_by="patient_id"),
        ClinicalDataset.from_hf(datasets.DatasetDict({"train": table}), group_by="patient_id"),
        ClinicalDataset.from_hf(tmp_path / "saved", group_by="patient_id"),
    ]
    for ds in got:
        assert _views(ds) == _views(reference)


def test_grouped_split_never_puts_a_patient_on_two_sides() -> None:
    ds = ClinicalDataset.default()
    for seed in range(5):
        train, held = ds.split(test_size=0.2, seed=seed)
        assert not {r.group for r in train} & {r.group for r in held}
        assert len(train) + len(held) == len(ds)
    a = ds.split(test_size=0.2, seed=3)
    b = ds.split(test_size=0.2, seed=3)
    assert [r.id for r in a[1]] == [r.id for r in b[1]]
    train, val, test = ds.three_way_split(validation_size=0.1, test_size=0.1, seed=0)
    groups = [{r.group for r in part} for part in (train, val, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(train) + len(val) + len(test) == len(ds) and len(val) > 0 and len(test) > 0


def test_duplicates_contamination_and_data_card() -> None:
    base = (
        "Summarize. A 64-year-old man with two days of chest pain radiating to the left arm. "
        "He has hypertension, type 2 diabetes and a 30 pack-year smoking history, and takes "
        "metformin, lisinopril and atorvastatin daily."
    )
    rows = [
        {"id": "x1", "question": base, "answer": "Possible ACS."},
        {"id": "x2", "question": base, "answer": "Possible ACS."},
        {"id": "x3", "question": base.replace("two", "three"), "answer": "Possible ACS."},
        {"id": "x4", "question": "What is a normal potassium level?", "answer": "3.5-5.0 mmol/L."},
    ]
    ds = ClinicalDataset.from_records(rows)
    exact, near = ds.duplicates(threshold=0.7)
    assert exact == [("x1", "x2")]
    assert {(a, b) for a, b, _ in near} >= {("x1", "x3"), ("x2", "x3")}
    evals = ClinicalDataset.from_records(
        [
            {"id": "e1", "question": base, "answer": "Other."},
            {"id": "e2", "question": "Name a loop diuretic.", "answer": "Furosemide."},
        ]
    )
    hits = ds.contamination(evals)
    assert {theirs for _, theirs, _ in hits} == {"e1"}
    card = ds.describe(near_threshold=0.7)
    assert card.records == 4 and card.kinds == {"qa": 4} and card.exact_duplicate_groups == 1
    assert json.loads(card.to_json())["fingerprint"] == ds.fingerprint
    assert "| records | 4 |" in card.to_markdown()


def test_prepare_is_cached_by_fingerprint(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds = ClinicalDataset.default()
    first = ds.prepare(tokenizer, max_seq_len=256, pack=True, cache_dir=tmp_path)
    again = ds.prepare(tokenizer, max_seq_len=256, pack=True, cache_dir=tmp_path)
    assert len(first.examples) > 100 and first.bins is not None
    assert not first.from_cache and again.from_cache
    assert again.examples == first.examples and again.bins == first.bins
    assert len(list(tmp_path.glob("prepared-*.json"))) == 1
    other = ds.prepare(tokenizer, max_seq_len=200, pack=True, cache_dir=tmp_path)
    assert not other.from_cache and other.cache_key != first.cache_key
