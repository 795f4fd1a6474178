"""The records a run trains on and holds out: one home for the split (training and export)."""

from __future__ import annotations

from typing import Any

from medlora.data import ClinicalDataset
from medlora.training._config import TrainingConfig


def run_records(config: TrainingConfig) -> ClinicalDataset:
    """Every record a run reads: ``config.data``, or the embedded synthetic set."""
    opts: dict[str, Any] = {"system_prompt": config.system_prompt}
    if config.data:
        return ClinicalDataset.from_jsonl(config.data, **opts)
    return ClinicalDataset.default(**opts)


def split_records(
    dataset: ClinicalDataset, config: TrainingConfig
) -> tuple[ClinicalDataset, ClinicalDataset | None]:
    """Training and held-out parts, split by patient with ``validation_fraction`` and
    ``seed`` (no held-out part when the fraction is 0)."""
    if config.validation_fraction == 0:
        return dataset, None
    return dataset.split(test_size=config.validation_fraction, seed=config.seed)


def run_datasets(config: TrainingConfig) -> tuple[ClinicalDataset, ClinicalDataset | None]:
    """Training and held-out records of a run made with ``config`` and no explicit datasets."""
    return split_records(run_records(config), config)
