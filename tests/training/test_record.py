"""RunRecord: the one reader and writer of medlora.json, for new and old run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medlora import DatasetError, ModelLoadError, RunRecord, TrainingConfig
from medlora.training import HeldOutSplit, run_data

# What a run directory's medlora.json held before held-out splits, data cards, world size and
# runtime were recorded (the keys the first versions wrote).
OLD_RECORD = {
    "kind": "training-run",
    "config": {"model": "m", "output_dir": "r", "max_seq_len": 256},
    "base_model": "/models/tiny",
    "data_fingerprint": "abc",
    "train_records": 90,
    "eval_records": 10,
    "metrics": {"steps": 24, "final_eval_loss": 1.5},
    "versions": {"medlora": "0.0.9"},
}


def test_a_record_round_trips_through_its_file_in_the_order_it_was_written(
    tmp_path: Path,
) -> None:
    record = RunRecord(
        config={"model": "m", "quantization": {"quant_type": "nf4"}},
        base_model=tmp_path / "base",
        data_fingerprint="f" * 64,
        train_records=9,
        eval_records=1,
        adapter_source="best",
        adapter_step=3,
        metrics={"steps": 4, "initial_eval_loss": 2.5},
        checkpoints=("step-0000004",),
        held_out_split=HeldOutSplit(recipe="fraction", fraction=0.1, fingerprint="h", records=1),
        data_card={"records": 10},
        world_size=2,
        runtime={"device": "cpu"},
    )
    path = record.write(tmp_path)
    assert path == tmp_path / "medlora.json"
    assert list(json.loads(path.read_text())) == [
        "kind",
        "config",
        "base_model",
        "data_fingerprint",
        "train_records",
        "eval_records",
        "adapter",
        "metrics",
        "checkpoints",
        "versions",
        "held_out",
        "data_card",
        "world_size",
        "runtime",
    ]
    again = RunRecord.from_dir(tmp_path)
    assert again == record
    quant = again.quantization()
    assert quant is not None and quant.quant_type == "nf4"


def test_an_old_record_loads_with_defaults_and_keeps_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "medlora.json").write_text(json.dumps({**OLD_RECORD, "notes": {"by": "hand"}}))
    record = RunRecord.from_dir(tmp_path)
    assert record.base_model == Path("/models/tiny") and record.max_seq_len == 256
    assert (record.adapter_source, record.adapter_step) == ("last", None)
    assert record.held_out_split is None and record.data_card is None
    assert (record.world_size, record.runtime, record.checkpoints) == (1, {}, ())
    assert record.quantization() is None
    assert record.extra == {"notes": {"by": "hand"}}
    copy = tmp_path / "copy"
    copy.mkdir()
    written = json.loads(record.write(copy).read_text())
    assert written["notes"] == {"by": "hand"} and written["metrics"] == OLD_RECORD["metrics"]


def test_an_export_directory_carries_the_run_record(tmp_path: Path) -> None:
    record = RunRecord.from_dict(OLD_RECORD)
    record.write_export(tmp_path, export_config={"formats": ["gguf"]}, merge_strategy="original")
    written = json.loads((tmp_path / "medlora.json").read_text())
    assert written["kind"] == "export" and written["merge_strategy"] == "original"
    assert written["training"] == record.to_dict()
    assert RunRecord.from_dir(tmp_path) == record


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_a_directory_without_a_readable_record_is_refused(
    tmp_path: Path, content: str | None
) -> None:
    if content is not None:
        (tmp_path / "medlora.json").write_text(content)
    with pytest.raises(ModelLoadError, match="medlora"):
        RunRecord.from_dir(tmp_path)


def test_held_out_of_an_old_record_is_checked_by_the_training_fingerprint(
    tmp_path: Path,
) -> None:
    """Records from before held-out splits were recorded: what the rebuilt split trained on
    must be what the run trained on."""
    config = TrainingConfig(model="m", output_dir=tmp_path / "run")
    data = run_data(config)
    record = RunRecord(config=config.to_dict(), data_fingerprint=data.train.fingerprint)
    assert data.held_out is not None
    assert record.held_out().fingerprint == data.held_out.fingerprint
    changed = RunRecord(config=config.to_dict(), data_fingerprint="something else")
    with pytest.raises(DatasetError, match="not the ones it held out"):
        changed.held_out()
