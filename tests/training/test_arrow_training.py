"""Training from data on disk (``backend: arrow``): the same steps as from memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from medlora import QLoRATrainer, TrainingResult
from medlora.training import RunRecord

if TYPE_CHECKING:
    from conftest import SmallRun


def _train_both(
    tmp_path: Path, model_dir: Path, small_run: SmallRun, **settings: Any
) -> dict[str, TrainingResult]:
    """The same 24 records (6 patients) trained from memory and from Arrow, in
    ``tmp_path/memory`` and ``tmp_path/arrow``."""
    rows = [{**r, "id": f"s{i}", "pid": f"P{i % 6}"} for i, r in enumerate(small_run.records(24))]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    results = {}
    for backend in ("memory", "arrow"):
        data = {"path": str(path), "group_by": "pid", "backend": backend}
        data["cache_dir"] = str(tmp_path / "cache")
        config = small_run.config(
            model_dir,
            tmp_path / backend,
            max_seq_len=128,
            validation_fraction=0.2,
            data=data,
            **settings,
        )
        results[backend] = QLoRATrainer(config).train(progress=False)
    return results


@pytest.mark.parametrize("packing", [False, True])
def test_arrow_and_memory_backends_train_the_same_losses(
    tmp_path: Path,
    random_model_dir: Path,
    small_run: SmallRun,
    packing: bool,
    capfd: pytest.CaptureFixture[str],
) -> None:
    results = _train_both(tmp_path, random_model_dir, small_run, max_steps=4, packing=packing)
    bars = capfd.readouterr().err
    assert "validate" not in bars and "tokenize" not in bars  # train(progress=False)
    memory, arrow = results["memory"], results["arrow"]
    assert arrow.train_losses == memory.train_losses
    assert arrow.final_eval_loss == memory.final_eval_loss
    assert arrow.train_tokens == memory.train_tokens
    assert list((tmp_path / "arrow" / "data-cache").glob("tokens-*.arrow"))
    records = {b: RunRecord.from_dir(tmp_path / b) for b in results}
    assert records["arrow"].held_out_split == records["memory"].held_out_split
    assert records["arrow"].data_fingerprint == records["memory"].data_fingerprint
    held = records["arrow"].held_out()  # what `medlora eval` scores, checked by fingerprint
    assert records["arrow"].held_out_split is not None
    assert (
        held.fingerprint == records["arrow"].held_out_split.fingerprint and len(held) == 4
    )  # 1 of 6 patients
    card, memory_card = records["arrow"].data_card, records["memory"].data_card
    assert card is not None and memory_card is not None
    assert card.token_lengths == memory_card.token_lengths


def test_export_measures_and_calibrates_an_arrow_run_on_its_own_records(
    tmp_path: Path,
    random_model_dir: Path,
    small_run: SmallRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exporter rebuilds an Arrow run's split from its config (no fallback to the
    embedded records) and calibrates on the first ``CALIBRATION_RECORDS`` training records,
    which here are all of them: the same text as the in-memory run's."""
    import warnings

    from medlora._hub import load_tokenizer
    from medlora.export import _fidelity

    def text(backend: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the embedded-records fallback warns
            return _fidelity.run_text(
                RunRecord.from_dir(tmp_path / backend),
                load_tokenizer(random_model_dir),
                held_out=None,
                calibration=None,
                max_positions=10_000,
                max_calibration_tokens=100_000,
            )

    texts = {b: text(b) for b in _train_both(tmp_path, random_model_dir, small_run, max_steps=2)}
    memory, arrow = texts["memory"], texts["arrow"]
    assert arrow.calibration_source == "the run's training records"
    assert sorted(arrow.calibration) == sorted(memory.calibration)
    assert arrow.fidelity == memory.fidelity

    monkeypatch.setattr(_fidelity, "CALIBRATION_RECORDS", 3)
    capped = text("arrow")
    assert len(capped.calibration) == 3
    assert set(capped.calibration) < set(arrow.calibration)
