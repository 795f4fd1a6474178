"""`medlora eval` scores exactly the records the run held out, or refuses and says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medlora import DatasetError, TrainingConfig
from medlora.eval._cli import held_out_dataset
from medlora.training import run_data


def _export(tmp_path: Path, config: TrainingConfig, **record: Any) -> Path:
    """An export directory whose medlora.json carries what a run made with ``config`` records."""
    data = run_data(config)
    training = {
        "config": config.to_dict(),
        "data_fingerprint": data.train.fingerprint,
        "held_out": data.split.to_dict(),
        **record,
    }
    out = tmp_path / "export"
    out.mkdir(exist_ok=True)
    (out / "medlora.json").write_text(json.dumps({"kind": "export", "training": training}))
    return out


def _notes(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "notes.csv"
    rows = "".join(f"Patient {i % 8} visit {i}: plan?,Plan {i}.,P{i % 8}\n" for i in range(n))
    path.write_text("q,a,mrn\n" + rows, encoding="utf-8")
    return path


def _config(tmp_path: Path, **data: Any) -> TrainingConfig:
    return TrainingConfig(
        model="m",
        output_dir=tmp_path / "run",
        seed=5,
        data={"field_map": {"q": "question", "a": "answer"}, "group_by": "mrn", **data},
    )


def test_eval_recreates_exactly_the_held_out_records(tmp_path: Path) -> None:
    config = _config(tmp_path, path=str(_notes(tmp_path)), eval=0.25, dedup="exact")
    held = held_out_dataset(_export(tmp_path, config))
    expected = run_data(config)
    assert expected.held_out is not None
    assert [r.id for r in held] == [r.id for r in expected.held_out]
    assert held.fingerprint == expected.split.fingerprint
    assert not {r.group for r in held} & {r.group for r in expected.train}


def test_eval_recreates_the_held_out_records_of_redacted_data(tmp_path: Path) -> None:
    """Group ids are replaced by keyed pseudonyms that come out the same when eval reloads."""
    data = {"path": str(_notes(tmp_path)), "eval": 0.25, "phi": "redact", "phi_engine": "patterns"}
    config = _config(tmp_path, **data)
    held = held_out_dataset(_export(tmp_path, config))
    expected = run_data(config)
    assert expected.held_out is not None
    assert [r.id for r in held] == [r.id for r in expected.held_out]
    groups = {r.group for r in held}
    assert all(g is not None and g.startswith("group-") for g in groups)
    assert not groups & {r.group for r in expected.train}
    assert all(r.source["mrn"] == r.group for r in held)


def test_eval_refuses_a_run_that_held_out_nothing(tmp_path: Path) -> None:
    """Before: validation_fraction 0 fell back to 0.1 and scored records the model trained on."""
    config = TrainingConfig(model="m", output_dir=tmp_path / "run", validation_fraction=0.0)
    export = _export(tmp_path, config)
    with pytest.raises(DatasetError, match=r"held out no records.*pass --data"):
        held_out_dataset(export)
    given = _export(tmp_path, TrainingConfig(model="m", output_dir="r"))
    record = json.loads((given / "medlora.json").read_text())
    record["training"]["held_out"]["recipe"] = "given"
    (given / "medlora.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match="datasets given in Python"):
        held_out_dataset(given)


def test_eval_refuses_when_the_data_changed_since_training(tmp_path: Path) -> None:
    notes = _notes(tmp_path)
    export = _export(tmp_path, _config(tmp_path, path=str(notes)))
    _notes(tmp_path, n=48)  # the file was edited after the run
    with pytest.raises(DatasetError, match="not the ones it held out"):
        held_out_dataset(export)


def test_eval_data_option_reads_any_format(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([{"question": "Normal SpO2?", "answer": "95-100%."}]))
    assert len(held_out_dataset(tmp_path / "no-export", data=path)) == 1
