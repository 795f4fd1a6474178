"""A seeded QLoRA run on the multiple-choice records only, long enough to move accuracy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pytest

MC_STEPS = 60
MC_HELD_OUT = 0.3


def mc_records() -> Any:
    from medlora import ClinicalDataset

    dataset = ClinicalDataset.default()
    kept = tuple(r for r in dataset if r.source.get("task") == "multiple_choice")
    return attrs.evolve(dataset, records=kept)


@pytest.fixture(scope="session")
def mc_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """(TrainingResult, held-out ClinicalDataset, seconds) of a 60-step run on the 96 MC
    records, 30% of the patients held out (the trainer's own grouped, seeded split)."""
    from medlora import QLoRATrainer, TrainingConfig

    dataset = mc_records()
    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path_factory.mktemp("mc-run"),
        max_steps=MC_STEPS,
        micro_batch_size=4,
        learning_rate=3e-3,
        warmup_steps=4,
        max_seq_len=256,
        validation_fraction=MC_HELD_OUT,
        seed=0,
    )
    started = time.perf_counter()
    result = QLoRATrainer(config, dataset=dataset).train(progress=False)
    seconds = time.perf_counter() - started
    held_out = dataset.split(test_size=MC_HELD_OUT, seed=0)[1]
    return result, held_out, seconds
