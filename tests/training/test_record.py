"""RunRecord: the one reader and writer of medlora.json, for new and old run directories."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from medlora import (
    DataCard,
    DatasetError,
    ModelLoadError,
    RunDataCard,
    RunMetrics,
    RunRecord,
    TrainingConfig,
)
from medlora.training import HeldOutSplit, run_data

# A run directory's medlora.json from before held-out splits, data cards, world size and
# runtime were recorded, without the adapter and checkpoint keys (they take their defaults).
OLD_METRICS = {
    "initial_eval_loss": 2.25,
    "final_eval_loss": 1.5,
    "best_step": None,
    "best_eval_loss": math.nan,
    "steps": 24,
    "stopped_early": False,
    "resumed_from_step": None,
    "train_tokens": 4096,
    "seconds": 12.5,
    "timings": {"setup": 1.0, "train": 11.5},
    "final_train_loss": 1.75,
}
OLD_RECORD = {
    "kind": "training-run",
    "config": {"model": "m", "output_dir": "r", "max_seq_len": 256},
    "base_model": "/models/tiny",
    "data_fingerprint": "abc",
    "train_records": 90,
    "eval_records": 10,
    "metrics": OLD_METRICS,
    "versions": {"medlora": "0.0.9"},
}
MAIN_RECORD = Path(__file__).parent / "records" / "main-0.1.0.json"
"""A ``medlora.json`` written by the dict-based writer (medlora 0.1.0 before ``RunMetrics`` and
``RunDataCard``): a run with a held-out fraction, PHI redaction, exact deduplication and token
lengths; ``best_eval_loss`` is NaN (no periodic evaluation)."""

CARD = DataCard(
    source="notes.jsonl",
    fingerprint="f" * 64,
    records=10,
    kinds={"qa": 10},
    groups=None,
    chars={"min": 10, "mean": 12.5, "median": 12.0, "p95": 15, "max": 15},
    turns={"min": 2, "mean": 2.0, "median": 2.0, "p95": 2, "max": 2},
    exact_duplicate_groups=0,
    near_duplicate_pairs=1,
    skipped=0,
)


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
        metrics=RunMetrics(steps=4, initial_eval_loss=2.5),
        checkpoints=("step-0000004",),
        held_out_split=HeldOutSplit(recipe="fraction", fraction=0.1, fingerprint="h", records=1),
        data_card=RunDataCard(dataset=CARD, held_out_records=1),
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
    assert record.metrics.steps == 24 and math.isnan(record.metrics.best_eval_loss)
    copy = tmp_path / "copy"
    copy.mkdir()
    written = json.loads(record.write(copy).read_text())
    assert written["notes"] == {"by": "hand"}
    assert json.dumps(written["metrics"]) == json.dumps(OLD_METRICS)  # same keys, same order


def test_a_record_written_before_typed_metrics_and_data_cards_loads_and_writes_back_unchanged(
    tmp_path: Path,
) -> None:
    shutil.copy(MAIN_RECORD, tmp_path / "medlora.json")
    record = RunRecord.from_dir(tmp_path)
    metrics = record.metrics
    assert (metrics.steps, metrics.train_tokens, metrics.final_train_loss) == (4, 812, 2.125)
    assert metrics.best_step is None and math.isnan(metrics.best_eval_loss)
    assert metrics.timings["train"] == 2.5 and metrics.extra == {}
    card = record.data_card
    assert card is not None and card.extra == {}
    assert card.dataset.records == record.train_records == 11 and card.dataset.groups == 11
    assert card.dataset.chars["mean"] == 119.4
    assert card.token_lengths == {"<=64": 1, "<=128": 2, "<=512": 1}
    assert card.duplicates_removed == {"exact": 1, "near": 0} and card.phi == {"NAME": 13}
    assert (card.held_out_records, card.contamination) == (1, 0)
    copy = tmp_path / "copy"
    copy.mkdir()
    assert record.write(copy).read_bytes() == MAIN_RECORD.read_bytes()
    assert RunRecord.from_dir(copy) == record  # NaN read back equals NaN written


def test_unknown_metrics_and_card_keys_are_kept_and_unchecked_phi_reads_as_none() -> None:
    data = json.loads(MAIN_RECORD.read_text())
    data["metrics"]["tokens_per_second"] = 250.0
    data["data_card"] |= {"phi": "not checked", "languages": ["en"]}
    record = RunRecord.from_dict(data)
    assert record.metrics.extra == {"tokens_per_second": 250.0}
    assert record.data_card is not None and record.data_card.phi is None
    assert record.data_card.extra == {"languages": ["en"]}
    again = record.to_dict()
    assert again["metrics"]["tokens_per_second"] == 250.0
    assert again["data_card"]["phi"] == "not checked" and again["data_card"]["languages"] == ["en"]


def test_a_data_card_without_the_datasets_fields_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="data_card lacks source, fingerprint"):
        RunRecord.from_dict({**OLD_RECORD, "data_card": {"records": 10}})


def test_an_export_directory_carries_the_run_record(tmp_path: Path) -> None:
    record = RunRecord.from_dict(OLD_RECORD)
    record.write_export(tmp_path, export_config={"formats": ["gguf"]}, merge_strategy="original")
    written = json.loads((tmp_path / "medlora.json").read_text())
    assert written["kind"] == "export" and written["merge_strategy"] == "original"
    assert json.dumps(written["training"]) == json.dumps(record.to_dict())  # NaN != NaN
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
