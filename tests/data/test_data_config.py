"""The data section of a training config: every ClinicalDataset option from a YAML file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import attrs
import pytest

from medlora import (
    ArrowDataset,
    ConfigError,
    DataConfig,
    DatasetError,
    PHIDetectedError,
    QLoRATrainer,
    RunDataCard,
    TrainingConfig,
)
from medlora.training import run_data, run_datasets


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _visits(n_patients: int = 10, per_patient: int = 3) -> list[dict[str, object]]:
    return [
        {"q": f"Visit {v} of patient {p}: what next?", "a": f"Plan {v} for {p}.", "mrn": f"P{p}"}
        for p in range(n_patients)
        for v in range(per_patient)
    ]


def test_a_path_a_mapping_and_a_data_config_are_the_same_setting() -> None:
    base = {"model": "m", "output_dir": "o"}
    as_path = TrainingConfig.from_dict({**base, "data": "notes.jsonl"})
    as_map = TrainingConfig.from_dict({**base, "data": {"path": "notes.jsonl"}})
    as_obj = TrainingConfig(**base, data=DataConfig(path="notes.jsonl"))
    assert as_path == as_map == as_obj
    assert TrainingConfig.from_dict(as_map.to_dict()) == as_map


def test_yaml_data_section_drives_every_option(tmp_path: Path) -> None:
    rows = _visits()
    csv = tmp_path / "visits.csv"
    csv.write_text(
        "q,a,mrn\n" + "".join(f'"{r["q"]}","{r["a"]}",{r["mrn"]}\n' for r in rows),
        encoding="utf-8",
    )
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: m\noutput_dir: {tmp_path / 'run'}\nseed: 3\ndata:\n  path: {csv}\n"
        "  kind: qa\n  field_map: {q: question, a: answer}\n  group_by: mrn\n"
        "  system_prompt: Be brief.\n  eval: 0.3\n",
        encoding="utf-8",
    )
    train, held = run_datasets(TrainingConfig.from_file(config))
    assert held is not None and len(train) + len(held) == 30
    assert {r.kind for r in train} == {"qa"}
    assert train[0].messages[0] == {"role": "system", "content": "Be brief."}
    # "10% of the patients held out" holds for a user's own file: no patient on both sides.
    assert not {r.group for r in train} & {r.group for r in held}
    assert len({r.group for r in held}) == 3  # 0.3 of the 10 patients


@pytest.mark.parametrize(
    ("section", "field", "fix"),
    [
        ({"path": "notes.txt"}, "data.format", "name it .jsonl"),
        ({"path": "a.jsonl", "phi": "redcat"}, "data.phi", "did you mean 'redact'"),
        ({"path": "a.jsonl", "dedup": "fuzzy"}, "data.dedup", "choose one of"),
        ({"path": "a.jsonl", "eval": 0.9}, "data.eval", "between 0 and 0.5"),
        ({"path": "a.jsonl", "kind": "chatt"}, "data.kind", "did you mean 'chat'"),
        ({"pth": "a.jsonl"}, "data.pth", "Did you mean 'path'"),
        ({"format": "csv"}, "data.format", "needs a path"),
        ({"path": "a.csv", "backend": "arrow"}, "data.backend", "convert the records to .jsonl"),
        ({"path": "a.jsonl", "backend": "arrow", "dedup": "near"}, "data.dedup", "dedup: exact"),
        ({"path": "a.jsonl", "backend": "arow"}, "data.backend", "did you mean 'arrow'"),
        ({"path": "a.jsonl", "arrow_threshold_mb": -1}, "data.arrow_threshold_mb", "between"),
    ],
)
def test_bad_data_settings_name_the_field_and_the_fix(
    section: dict[str, object], field: str, fix: str
) -> None:
    with pytest.raises(ConfigError, match=fix) as info:
        TrainingConfig.from_dict({"model": "m", "output_dir": "o", "data": section})
    assert info.value.field == field


def test_an_eval_file_is_the_held_out_set_with_the_same_options(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [{"q": "a b c", "a": "d"}, {"q": "e f", "a": "g"}])
    held = _jsonl(tmp_path / "held.jsonl", [{"q": "h i", "a": "j"}])
    data = DataConfig(path=str(train), eval=str(held), field_map={"q": "question", "a": "answer"})
    loaded = data.load()
    assert len(loaded.records) == 2 and loaded.eval_records is not None
    assert loaded.eval_records[0].messages[-1]["content"] == "j"


def test_dedup_removes_duplicates_and_reports_what_it_removed(tmp_path: Path) -> None:
    note = (
        "Patient with chest pain radiating to the left arm since this morning, sweating and "
        "short of breath; troponin raised on two draws, ECG shows ST depression in the lateral "
        "leads; started aspirin, heparin and a statin, cardiology asked to review for an "
        "angiogram within twenty four hours"
    )
    rows = [
        {"id": "a", "question": note, "answer": "ACS"},
        {"id": "b", "question": note.upper(), "answer": "acs"},  # exact after normalising
        {"id": "c", "question": note + " today", "answer": "ACS"},  # near
        {"id": "d", "question": "Unrelated rash on the forearm after gardening", "answer": "CD"},
    ]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    exact = DataConfig(path=str(path), dedup="exact").load()
    assert [r.id for r in exact.records] == ["a", "c", "d"]
    assert exact.dedup is not None and exact.dedup.removed == (("b", "a", 1.0),)
    near = DataConfig(path=str(path), dedup="near").load()
    assert [r.id for r in near.records] == ["a", "d"]
    assert near.dedup is not None and (near.dedup.exact, near.dedup.near) == (1, 1)
    assert "removed 1 exact and 1 near" in "\n".join(near.summary())


def test_phi_modes_from_the_config(tmp_path: Path) -> None:
    rows = [{"question": "Patient: John Smith, MRN: 12345678. Plan?", "answer": "Rest."}]
    path = _jsonl(tmp_path / "phi.jsonl", rows)
    redacted = DataConfig(path=str(path), phi="redact").load()
    assert "John" not in redacted.records[0].messages[0]["content"]
    assert redacted.phi is not None and redacted.phi.counts["NAME"] == 1
    with pytest.raises(PHIDetectedError) as info:
        DataConfig(path=str(path), phi="fail").load()
    assert "John" not in str(info.value) and "NAME" in str(info.value)


def test_bad_data_fails_before_the_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": 3}\n', encoding="utf-8")
    config = TrainingConfig(
        model=str(tmp_path / "no-such-model"), output_dir=tmp_path / "r", data=str(path)
    )
    with pytest.raises(DatasetError) as info:  # not ModelLoadError: the model never loads
        QLoRATrainer(config).train(progress=False)
    assert info.value.path == str(path)
    assert not (tmp_path / "r").exists()


def test_phi_engine_is_checked_and_patterns_run_without_warning(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'presidio'"):
        DataConfig(phi_engine="presidi")  # type: ignore[arg-type]
    rows = [{"question": "Seen with her daughter Maria Lopez on 03/14/2021. Plan?", "answer": "."}]
    path = _jsonl(tmp_path / "phi.jsonl", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = DataConfig(path=str(path), phi="redact", phi_engine="patterns").load()
    assert (
        loaded.records[0].messages[0]["content"] == "Seen with her daughter [NAME] on [DATE]. Plan?"
    )


def test_backend_arrow_from_yaml_trains_on_the_same_split_and_records(tmp_path: Path) -> None:
    rows = [*_visits(), _visits()[4]]  # line 31 repeats line 5
    path = _jsonl(tmp_path / "visits.jsonl", rows)
    runs = {}
    for backend in ("memory", "arrow"):
        config = tmp_path / f"{backend}.yaml"
        config.write_text(
            f"model: m\noutput_dir: {tmp_path / backend}\nseed: 3\ndata:\n  path: {path}\n"
            "  field_map: {q: question, a: answer}\n  group_by: mrn\n  eval: 0.3\n"
            f"  dedup: exact\n  backend: {backend}\n  cache_dir: {tmp_path / 'cache'}\n",
            encoding="utf-8",
        )
        runs[backend] = run_data(TrainingConfig.from_file(config))
    memory, arrow = runs["memory"], runs["arrow"]
    assert isinstance(arrow.train, ArrowDataset) and arrow.train.path.parent == tmp_path / "cache"
    assert arrow.train.fingerprint == memory.train.fingerprint
    assert arrow.split == memory.split and arrow.split.records == 9  # 3 of 10 patients
    assert arrow.held_out is not None and memory.held_out is not None
    assert arrow.held_out.records == memory.held_out.records
    assert arrow.contamination == memory.contamination
    assert arrow.loaded is not None and arrow.loaded.dedup is not None
    assert arrow.loaded.dedup.removed == ((f"{path}:30", f"{path}:4", 1.0),)
    report = arrow.report()
    assert "near duplicates not searched (arrow backend)" not in report  # dedup is on
    assert "removed 1 exact and 0 near duplicates" in report
    card = RunDataCard.of(arrow).dataset
    assert card.records == RunDataCard.of(memory).dataset.records
    assert card.near_duplicate_pairs is None


def test_auto_backend_streams_jsonl_files_above_the_threshold(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "v.jsonl", _visits())
    assert not DataConfig(path=str(path)).uses_arrow()  # 1 kB < 500 MB
    small = DataConfig(path=str(path), arrow_threshold_mb=0.001, cache_dir=str(tmp_path / "c"))
    assert small.uses_arrow()
    assert not DataConfig(path=str(path), backend="memory", arrow_threshold_mb=0).uses_arrow()
    assert not DataConfig(path=str(path), arrow_threshold_mb=0, dedup="near").uses_arrow()
    loaded = attrs.evolve(small, field_map={"q": "question", "a": "answer"}).load()
    assert isinstance(loaded.records, ArrowDataset) and len(loaded.records) == 30
    assert "near duplicates not searched (arrow backend)" in "\n".join(loaded.summary())
