"""The records a run trains on and holds out: one home for the split (training, export, eval)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from medlora.data import ArrowDataset, ClinicalDataset, DataConfig, LoadedData
from medlora.training._config import TrainingConfig

Recipe = Literal["fraction", "file", "given", "none"]


@attrs.frozen(kw_only=True)
class HeldOutSplit:
    """How a run chose its held-out records; written to ``medlora.json`` so that evaluation
    re-creates exactly those records and can prove it (by :attr:`fingerprint`)."""

    recipe: Recipe
    """``fraction`` (of the groups, seeded), ``file`` (``data.eval``), ``given``
    (``eval_dataset=`` in Python) or ``none`` (no held-out records)."""
    fraction: float | None = None
    """The held-out fraction, for ``fraction``."""
    seed: int = 0
    """The split seed, for ``fraction``."""
    fingerprint: str | None = None
    """``ClinicalDataset.fingerprint`` of the held-out records."""
    records: int = 0
    """How many records were held out."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``medlora.json``."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldOutSplit:
        """Read back :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})


@attrs.frozen(kw_only=True)
class RunData:
    """A run's training and held-out records, and what loading them found."""

    train: ClinicalDataset | ArrowDataset
    """Records trained on (on disk with the Arrow backend)."""
    held_out: ClinicalDataset | None
    """Records held out for evaluation."""
    split: HeldOutSplit
    """How :attr:`held_out` was chosen."""
    loaded: LoadedData | None = None
    """The loaded data section (PHI findings, duplicates removed); ``None`` for datasets
    given in Python."""
    contamination: tuple[tuple[str, str, float], ...] = ()
    """``(training id, held-out id, jaccard)`` of held-out records whose prompt (nearly)
    repeats a training prompt (``ClinicalDataset.contamination``; on disk
    ``ArrowDataset.contamination``)."""

    @classmethod
    def of(
        cls,
        train: ClinicalDataset | ArrowDataset,
        held_out: ClinicalDataset | None,
        split: HeldOutSplit,
        loaded: LoadedData | None = None,
    ) -> RunData:
        """Bundle the parts and check held-out records against the training ones."""
        leaks = train.contamination(held_out) if held_out is not None and len(held_out) else []
        return cls(
            train=train,
            held_out=held_out,
            split=split,
            loaded=loaded,
            contamination=tuple(leaks),
        )

    def report(self) -> str:
        """The one-screen data report ``medlora train`` prints before any model loads."""
        lines = (
            self.loaded.summary()
            if self.loaded is not None
            else [f"data: {source_of(self.train)} (given in Python)"]
        )
        split = self.split
        if split.recipe == "none":
            held = "none (validation_fraction 0): no held-out loss"
        else:
            how = {
                "fraction": f"{split.fraction} of the groups, seed {split.seed}",
                "file": "the data.eval file",
                "given": "eval_dataset given in Python",
            }[split.recipe]
            held = f"{split.records} records ({how})"
        lines += [f"  train     {len(self.train)} records", f"  held out  {held}"]
        if self.contamination:
            leaked = len({h for _, h, _ in self.contamination})
            lines.append(
                f"  leakage   {leaked} held-out records repeat a training prompt (Jaccard >= "
                "0.8): their scores overstate the model; deduplicate or group by patient"
            )
        return "\n".join(lines)


def run_data_config(config: TrainingConfig) -> DataConfig:
    """The run's data section, with the run-wide ``system_prompt`` where it sets none."""
    data = config.data or DataConfig()
    if data.system_prompt is None and config.system_prompt is not None:
        data = attrs.evolve(data, system_prompt=config.system_prompt)
    return data


def held_out_fraction(config: TrainingConfig) -> float:
    """``data.eval`` when it is a fraction, else ``validation_fraction``."""
    data = config.data
    if data is not None and isinstance(data.eval, float):
        return data.eval
    return config.validation_fraction


def source_of(dataset: ClinicalDataset | ArrowDataset) -> str:
    """Where a dataset's records came from."""
    return dataset.source if isinstance(dataset, ArrowDataset) else dataset.report.source


def split_records(
    dataset: ClinicalDataset | ArrowDataset, config: TrainingConfig
) -> tuple[ClinicalDataset | ArrowDataset, ClinicalDataset | None]:
    """Training and held-out parts, split by group with the run's fraction and ``seed`` (no
    held-out part when the fraction is 0)."""
    fraction = held_out_fraction(config)
    if fraction == 0:
        return dataset, None
    return dataset.split(test_size=fraction, seed=config.seed)


def describe_split(
    held: ClinicalDataset | None, recipe: Recipe, config: TrainingConfig
) -> HeldOutSplit:
    """The :class:`HeldOutSplit` of ``held`` chosen by ``recipe``."""
    if held is None or not len(held):
        return HeldOutSplit(recipe="none")
    fraction = held_out_fraction(config) if recipe == "fraction" else None
    return HeldOutSplit(
        recipe=recipe,
        fraction=fraction,
        seed=config.seed,
        fingerprint=held.fingerprint,
        records=len(held),
    )


def run_data(config: TrainingConfig, *, progress: bool = True) -> RunData:
    """Load, check and split the records of ``config`` (no model involved)."""
    loaded = run_data_config(config).load(progress=progress)
    recipe: Recipe = "file"
    train: ClinicalDataset | ArrowDataset = loaded.records
    held = loaded.eval_records
    if held is None:
        (train, held), recipe = split_records(loaded.records, config), "fraction"
    return RunData.of(train, held, describe_split(held, recipe, config), loaded)


def run_datasets(
    config: TrainingConfig,
) -> tuple[ClinicalDataset | ArrowDataset, ClinicalDataset | None]:
    """Training and held-out records of a run made with ``config`` and no explicit datasets."""
    data = run_data(config)
    return data.train, data.held_out


def length_histogram(lengths: Sequence[int]) -> dict[str, int]:
    """Counts of lengths in power-of-two buckets: ``{"<=64": 3, "<=128": 10, ...}``."""
    out: dict[str, int] = {}
    for length in sorted(lengths):
        bound = 64
        while bound < length:
            bound *= 2
        out[f"<={bound}"] = out.get(f"<={bound}", 0) + 1
    return out
