"""A run's records: the split it records, contamination it checks, the data card it writes."""

from __future__ import annotations

import json
from pathlib import Path

from medlora import RunDataCard, RunRecord, TrainingConfig
from medlora.training import run_data
from medlora.training._datasets import length_histogram


def _rows(tmp_path: Path) -> Path:
    rows = [
        {
            "id": f"r{i}",
            "pid": f"P{i}",
            "question": f"Patient: John Smith. Case {i}: cough for {i} days, fever, "
            "crackles at the right base; what is the most likely diagnosis today?",
            "answer": "Community-acquired pneumonia.",
        }
        for i in range(12)
    ]
    rows.append({**rows[0], "id": "copy"})  # an exact duplicate
    return _write(tmp_path / "notes.jsonl", rows)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_training_checks_held_out_records_against_training_prompts(tmp_path: Path) -> None:
    notes = _rows(tmp_path)
    first = json.loads(notes.read_text().splitlines()[0])
    fresh = {"id": "new", "pid": "Q", "question": "Itchy rash after gardening?", "answer": "CD"}
    held = _write(tmp_path / "held.jsonl", [{**first, "id": "seen", "pid": "Q"}, fresh])
    data = {"path": str(notes), "group_by": "pid", "eval": str(held)}
    run = run_data(TrainingConfig(model="m", output_dir=tmp_path / "r", data=data))
    assert {(ours, theirs) for ours, theirs, _ in run.contamination} == {
        ("r0", "seen"),
        ("copy", "seen"),
    }
    assert "leakage   1 held-out records repeat a training prompt" in run.report()


def test_data_card_has_counts_lengths_duplicates_phi_and_no_text(tmp_path: Path) -> None:
    data = {"path": str(_rows(tmp_path)), "group_by": "pid", "phi": "redact", "dedup": "exact"}
    run = run_data(TrainingConfig(model="m", output_dir=tmp_path / "r", data=data))
    card = RunDataCard.of(run, token_lengths=[30, 70, 70, 300])
    assert card.dataset.kinds == {"qa": len(run.train)}
    assert card.duplicates_removed == {"exact": 1, "near": 0}
    assert card.phi is not None and card.phi["NAME"] == 13  # found before the dup went
    assert card.token_lengths == {"<=64": 1, "<=128": 2, "<=512": 1}
    assert card.held_out_records == run.split.records
    assert isinstance(card.contamination, int)
    text = json.dumps(RunRecord(data_card=card).to_dict())
    assert "Smith" not in text and "pneumonia" not in text


def test_length_histogram_buckets_by_powers_of_two() -> None:
    assert length_histogram([]) == {}
    assert length_histogram([1, 64, 65, 1024]) == {"<=64": 2, "<=128": 1, "<=1024": 1}
