"""ArrowDataset: the in-memory path's records, split, hygiene and examples, streamed on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from medlora import ArrowDataset, ClinicalDataset, ConfigError, DatasetError, PHIDetectedError
from medlora.data import PHIDetector


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _notes(n: int = 40) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "id": f"r{i}",
            "pid": f"P{i % 13}",
            "question": f"Patient: John Smith. Case {i}: cough for {i} days, fever; next step?"
            + " More detail." * (i % 7),
            "answer": f"Chest X-ray and review in {i % 5 + 1} days.",
        }
        for i in range(n)
    ]
    if n > 3:
        rows.append({**rows[3], "id": "copy-of-r3"})  # an exact duplicate
    return rows


@pytest.fixture(scope="module")
def tokenizer(random_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(random_model_dir)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    return _jsonl(tmp_path / "notes.jsonl", _notes())


def _load(path: Path, cache: Path, **options: Any) -> ArrowDataset:
    return ArrowDataset.from_jsonl(path, cache_dir=cache, progress=False, **options)


def _pairs(rows: Any) -> list[list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    return [[(e.input_ids, e.labels) for e in row] for row in rows]


def test_records_and_fingerprint_are_those_of_the_in_memory_path(
    notes: Path, tmp_path: Path
) -> None:
    memory = ClinicalDataset.from_jsonl(notes, group_by="pid")
    arrow = _load(notes, tmp_path / "c", group_by="pid")
    assert len(arrow) == len(memory) == 41
    assert arrow.fingerprint == memory.fingerprint
    assert list(arrow.iter_records()) == list(memory.records)
    assert [r.source for r in arrow.iter_records()] == [r.source for r in memory.records]
    assert dict(arrow.kinds) == dict(memory.report.kinds)
    assert arrow.describe() == attrs.evolve(memory.describe(), near_duplicate_pairs=None)


def test_the_split_holds_out_the_same_patients_as_in_memory(notes: Path, tmp_path: Path) -> None:
    memory = ClinicalDataset.from_jsonl(notes, group_by="pid")
    arrow = _load(notes, tmp_path / "c", group_by="pid")
    for seed in (0, 3):
        train, held = arrow.split(test_size=0.25, seed=seed)
        m_train, m_held = memory.split(test_size=0.25, seed=seed)
        assert train.fingerprint == m_train.fingerprint and len(train) == len(m_train)
        assert held.fingerprint == m_held.fingerprint
        assert held.records == m_held.records
        assert {r.group for r in held} & {r.group for r in train.iter_records()} == set()
        assert str(held.report.locate(4)) == "line 5"


@pytest.mark.parametrize("pack", [False, True])
def test_examples_and_packed_rows_equal_the_in_memory_ones(
    notes: Path, tmp_path: Path, tokenizer: Any, pack: bool
) -> None:
    memory = ClinicalDataset.from_jsonl(notes).prepare(tokenizer, max_seq_len=48, pack=pack)
    arrow = _load(notes, tmp_path / "c").prepare(
        tokenizer, max_seq_len=48, pack=pack, progress=False
    )
    assert memory.truncated > 0  # the 48-token cut is exercised
    assert (arrow.truncated, arrow.dropped) == (memory.truncated, memory.dropped)
    assert arrow.examples == len(memory.examples)
    assert arrow.packing == memory.packing
    rows = arrow.items()
    assert len(rows) == arrow.rows == len(memory.rows())
    if pack:
        assert _pairs(rows) == _pairs(memory.rows())
    else:
        assert list(rows) == list(memory.examples)
    assert arrow.lengths() == [len(e) for e in memory.examples] or pack
    assert sorted(arrow.lengths()) == sorted(len(e) for e in memory.examples)
    assert arrow.to_hf().num_rows == arrow.rows  # datasets opens the file


def test_small_pack_windows_keep_every_example_within_max_seq_len(
    notes: Path, tmp_path: Path, tokenizer: Any
) -> None:
    arrow = _load(notes, tmp_path / "c")
    whole = arrow.prepare(tokenizer, max_seq_len=64, pack=True, progress=False)
    windows = arrow.prepare(tokenizer, max_seq_len=64, pack=True, pack_window=7, progress=False)
    assert windows.cache_key != whole.cache_key
    rows = list(windows.items())
    assert all(sum(len(e) for e in row) <= 64 for row in rows)
    assert sorted(_pairs([[e] for row in rows for e in row])) == sorted(
        _pairs([[e] for row in whole.items() for e in row])
    )
    assert windows.packing is not None and windows.packing.bins >= whole.rows


def test_exact_dedup_and_phi_counts_match_the_in_memory_path(notes: Path, tmp_path: Path) -> None:
    detector = PHIDetector(engine="patterns")
    memory = ClinicalDataset.from_jsonl(notes, group_by="pid")
    redacted, m_phi = memory.deidentify(mode="redact", detector=detector)
    deduped, m_dedup = redacted.deduplicate()
    arrow = _load(
        notes, tmp_path / "c", group_by="pid", phi="redact", phi_detector=detector, dedup="exact"
    )
    assert arrow.phi is not None and arrow.dedup is not None
    assert dict(arrow.phi.counts) == dict(m_phi.counts) and arrow.phi.counts["NAME"] == 41
    assert arrow.phi.records == m_phi.records
    assert arrow.dedup.removed == m_dedup.removed == (("copy-of-r3", "r3", 1.0),)
    assert arrow.fingerprint == deduped.fingerprint  # same redaction, same group pseudonyms
    assert [r.group for r in arrow.iter_records()] == [r.group for r in deduped.records]
    again = _load(
        notes, tmp_path / "c", group_by="pid", phi="redact", phi_detector=detector, dedup="exact"
    )
    assert again.from_cache and again.phi == arrow.phi and again.dedup == arrow.dedup


def test_phi_fail_names_lines_and_kinds_and_leaves_no_records_file(
    notes: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    with pytest.raises(PHIDetectedError) as memory:
        ClinicalDataset.from_jsonl(notes).deidentify(
            mode="fail", detector=PHIDetector(engine="patterns")
        )
    with pytest.raises(PHIDetectedError) as arrow:
        _load(notes, cache, phi="fail", phi_detector=PHIDetector(engine="patterns"))
    assert str(arrow.value) == str(memory.value)
    assert "line 1" in str(arrow.value) and "Smith" not in str(arrow.value)
    assert sorted(p.name for p in cache.iterdir()) == []


def test_errors_name_file_line_and_field_as_the_in_memory_path(tmp_path: Path) -> None:
    rows: list[Any] = _notes(3)
    bad = tmp_path / "bad.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    text += "not json\n" + json.dumps({"id": "x", "messages": "oops"}) + "\n\n[1]\n"
    text += json.dumps({"id": "y", "question": "q?", "answer": "a"}) + "\n"  # no group
    bad.write_text(text)
    with pytest.raises(DatasetError) as memory:
        ClinicalDataset.from_jsonl(bad, group_by="pid")
    with pytest.raises(DatasetError) as arrow:
        _load(bad, tmp_path / "c", group_by="pid")
    assert str(arrow.value) == str(memory.value)
    message = str(arrow.value)
    assert f"{bad}, line 4" in message and f"{bad}, line 5" in message
    assert f"{bad}, line 7" in message and f"{bad}, line 8" in message and "pid" in message
    assert "line 6" not in message and "line 3" not in message
    assert [p.location for p in arrow.value.problems] == [p.location for p in memory.value.problems]
    assert not list((tmp_path / "c").glob("*"))  # nothing half-written stays behind
    skipped = _load(bad, tmp_path / "c", group_by="pid", on_error="skip")
    assert len(skipped) == 3 and len(skipped.skipped) == 5
    assert [str(p) for p in skipped.skipped] == [
        str(p)
        for p in ClinicalDataset.from_jsonl(bad, group_by="pid", on_error="skip").report.skipped
    ]


def test_the_cache_is_reused_and_invalidated_by_content_options_and_tokenizer(
    notes: Path, tmp_path: Path, tokenizer: Any
) -> None:
    cache = tmp_path / "c"
    first = _load(notes, cache)
    assert not first.from_cache and first.path.parent == cache
    assert _load(notes, cache).from_cache
    assert not _load(notes, cache, group_by="pid").from_cache  # other options
    prepared = first.prepare(tokenizer, max_seq_len=64, progress=False)
    assert first.prepare(tokenizer, max_seq_len=64, progress=False).from_cache
    assert not first.prepare(tokenizer, max_seq_len=65, progress=False).from_cache
    tokenizer.chat_template = (tokenizer.chat_template or "") + " "
    try:
        assert not first.prepare(tokenizer, max_seq_len=64, progress=False).from_cache
    finally:
        tokenizer.chat_template = tokenizer.chat_template[:-1]
    rows = _notes()
    rows[0]["answer"] = "Changed."
    _jsonl(notes, rows)
    changed = _load(notes, cache)
    assert not changed.from_cache and changed.fingerprint != first.fingerprint
    assert prepared.path.is_file() and not list(cache.glob("*.tmp*"))


def test_near_dedup_is_refused_with_a_way_out(notes: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dedup='exact', or backend: memory"):
        _load(notes, tmp_path / "c", dedup="near")  # type: ignore[arg-type]


def test_contamination_matches_the_in_memory_check(notes: Path, tmp_path: Path) -> None:
    held = ClinicalDataset.from_records(
        [{**_notes()[5], "id": "seen"}, {"id": "new", "question": "Rash?", "answer": "CD"}]
    )
    memory = ClinicalDataset.from_jsonl(notes).contamination(held)
    arrow = _load(notes, tmp_path / "c").contamination(held)
    assert arrow == memory and ("r5", "seen", 1.0) in arrow


def test_head_reads_only_the_first_records(notes: Path, tmp_path: Path) -> None:
    arrow = _load(notes, tmp_path / "c")
    memory = ClinicalDataset.from_jsonl(notes)
    first = arrow.head(5)
    assert first.records == memory.records[:5] and first.report.source == str(notes)
    assert arrow.head(100).records == memory.records  # fewer records than asked for
