"""RunRecord: the one reader and writer of a run's ``medlora.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import DatasetError, ModelLoadError
from medlora._io import write_json
from medlora._versions import library_versions
from medlora.data import ClinicalDataset, DataCard
from medlora.training._config import QuantizationConfig, TrainingConfig
from medlora.training._datasets import HeldOutSplit, RunData, length_histogram, run_data
from medlora.training._result import TrainingResult

RECORD_FILE = "medlora.json"

_NOT_HELD_OUT = {
    "none": "held out no records (validation_fraction 0 and no data.eval)",
    "given": "was trained on datasets given in Python, which its config cannot rebuild",
}


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _float(value: float | None) -> float:
    """JSON numbers as floats; ``null`` as NaN (not measured)."""
    return math.nan if value is None else float(value)


def _same_nan(value: float) -> object:
    """Equality key: a NaN read back from the file equals the NaN that was written."""
    return "nan" if math.isnan(value) else value


def _measured(default: float = math.nan) -> Any:
    return attrs.field(default=default, converter=_float, eq=_same_nan)


@attrs.frozen(kw_only=True)
class RunMetrics:
    """What a run measured (``metrics`` in ``medlora.json``); NaN where it measured nothing."""

    initial_eval_loss: float = _measured()
    """Held-out loss of the base model before training."""
    final_eval_loss: float = _measured()
    """Held-out loss of the adapter the run ended with."""
    best_step: int | None = None
    """Step of the best held-out loss among periodic evaluations."""
    best_eval_loss: float = _measured()
    """That best held-out loss."""
    steps: int = 0
    """Optimizer steps taken."""
    stopped_early: bool = False
    """Whether early stopping ended the run."""
    resumed_from_step: int | None = None
    """The checkpoint step the run continued from, if it resumed."""
    train_tokens: int = 0
    """Supervised (non-padding) tokens seen."""
    seconds: float = _measured()
    """Wall time of the training loop."""
    timings: Mapping[str, float] = attrs.field(factory=dict, converter=_dict)
    """Seconds spent in ``setup``, ``train``, ``eval`` and ``save``."""
    final_train_loss: float = _measured()
    """Mean training loss of the last optimizer step."""
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_dict)
    """Keys of ``metrics`` this version does not know, kept as they were."""

    @classmethod
    def of_result(cls, result: TrainingResult) -> RunMetrics:
        """The metrics of a finished run."""
        return cls(
            initial_eval_loss=result.initial_eval_loss,
            final_eval_loss=result.final_eval_loss,
            best_step=result.best_step,
            best_eval_loss=result.best_eval_loss,
            steps=result.steps,
            stopped_early=result.stopped_early,
            resumed_from_step=result.resumed_from_step,
            train_tokens=result.train_tokens,
            seconds=result.seconds,
            timings=result.timings,
            final_train_loss=result.train_losses[-1] if result.train_losses else math.nan,
        )


@attrs.frozen(kw_only=True)
class RunDataCard:
    """The run's data card (``data_card`` in ``medlora.json``, shown in the exported model
    card): the training records' :class:`~medlora.data.DataCard` and what the run added,
    counts only, never the text."""

    dataset: DataCard
    """Counts per kind, character and turn statistics, duplicates of the training records
    (``ClinicalDataset.describe()``; its fields sit at the top level of ``data_card``)."""
    token_lengths: Mapping[str, int] | None = None
    """Training examples per token-length bucket (``{"<=64": 3, ...}``)."""
    duplicates_removed: Mapping[str, int] | None = None
    """Records removed by ``data.dedup``: ``{"exact": n, "near": m}``."""
    phi: Mapping[str, int] | None = None
    """PHI findings per kind; None when the data was not checked."""
    held_out_records: int = 0
    """How many records were held out."""
    contamination: int = 0
    """Held-out records whose prompt (nearly) repeats a training prompt."""
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_dict)
    """Keys of ``data_card`` this version does not know, kept as they were."""

    @classmethod
    def of(cls, data: RunData, token_lengths: Sequence[int] = ()) -> RunDataCard:
        """The card of a run's records; ``token_lengths`` of its tokenized examples."""
        dedup = data.loaded.dedup if data.loaded is not None else None
        phi = data.loaded.phi if data.loaded is not None else None
        removed = None if dedup is None else {"exact": dedup.exact, "near": dedup.near}
        return cls(
            dataset=data.train.describe(),
            token_lengths=length_histogram(token_lengths) if token_lengths else None,
            duplicates_removed=removed,
            phi=None if phi is None else dict(phi.counts),
            held_out_records=data.split.records,
            contamination=len({held for _, held, _ in data.contamination}),
        )


@attrs.frozen(kw_only=True)
class RunRecord:
    """What a training run wrote into its ``medlora.json``: its config, data, adapter,
    metrics and the versions that made it; an export directory carries it under
    ``training``.

    Records written by earlier versions load too: a missing key takes its default, and keys
    this version does not know are kept in :attr:`extra` and written back.
    """

    config: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    """The run's :class:`TrainingConfig` as ``TrainingConfig.to_dict()`` wrote it (kept as
    written, so a record stays readable after config fields change)."""
    base_model: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    """The local directory of the base model."""
    data_fingerprint: str | None = None
    """``ClinicalDataset.fingerprint`` of the training records."""
    train_records: int = 0
    """How many records were trained on."""
    eval_records: int = 0
    """How many records were held out."""
    adapter_source: str = "last"
    """Which adapter ``adapter/`` holds: ``best`` (by held-out loss) or ``last``."""
    adapter_step: int | None = None
    """The step that adapter comes from."""
    metrics: RunMetrics = attrs.field(factory=RunMetrics)
    """Held-out losses, steps, tokens, seconds and timings."""
    checkpoints: tuple[str, ...] = attrs.field(default=(), converter=_names)
    """Checkpoint directory names left in the run directory, oldest first."""
    versions: dict[str, str] = attrs.field(factory=dict, converter=_dict)
    """Library versions that made the run."""
    held_out_split: HeldOutSplit | None = None
    """How the held-out records were chosen (``held_out`` in the file); None in records
    from before it was recorded."""
    data_card: RunDataCard | None = None
    """Counts, length histograms, duplicates, contamination and PHI findings of the data
    (None in records from before it was recorded)."""
    world_size: int = 1
    """Processes the run trained on."""
    runtime: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    """What the trainer chose for the machine (precision, attention, loss, optimizer...)."""
    extra: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    """Keys of the file this version does not know, kept as they were."""

    @classmethod
    def of_result(
        cls,
        result: TrainingResult,
        *,
        config: Mapping[str, Any],
        data: RunData,
        data_card: RunDataCard | None,
        adapter_source: str,
        adapter_step: int,
        world_size: int,
        runtime: Mapping[str, Any],
    ) -> RunRecord:
        """The record of a finished run."""
        held = data.held_out
        return cls(
            config=config,
            base_model=result.base_model,
            data_fingerprint=data.train.fingerprint,
            train_records=len(data.train),
            eval_records=0 if held is None else len(held),
            adapter_source=adapter_source,
            adapter_step=adapter_step,
            metrics=RunMetrics.of_result(result),
            checkpoints=tuple(p.name for p in result.checkpoints),
            versions=library_versions(),
            held_out_split=data.split,
            data_card=data_card,
            world_size=world_size,
            runtime=runtime,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Read the JSON form (:meth:`to_dict`); an export's record gives its ``training``."""
        if data.get("kind") == "export":
            data = data.get("training") or {}
        known = dict(data)
        known.pop("kind", None)
        adapter = known.pop("adapter", None) or {}
        split = known.pop("held_out", None)
        metrics = known.pop("metrics", None) or {}
        card = known.pop("data_card", None)
        names = {f.name for f in attrs.fields(cls)} - {"held_out_split", "extra", "metrics"}
        fields = {name: known.pop(name) for name in list(known) if name in names}
        return cls(
            **fields,
            adapter_source=adapter.get("source", "last"),
            adapter_step=adapter.get("step"),
            held_out_split=HeldOutSplit.from_dict(split) if isinstance(split, Mapping) else None,
            metrics=_read_metrics(metrics),
            data_card=_read_card(card) if isinstance(card, Mapping) else None,
            extra=known,
        )

    @classmethod
    def from_dir(cls, run_dir: str | Path) -> RunRecord:
        """Read ``medlora.json`` of a training run directory or of an export directory.

        Raises:
            ModelLoadError: The directory has no readable ``medlora.json``.
        """
        path = Path(run_dir) / RECORD_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(
                f"{path.parent} is not a medlora training run or export (cannot read "
                f"{RECORD_FILE}: {exc}); pass the output_dir of a run or the out_dir of an "
                "export"
            ) from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path} holds no JSON object; it is not a medlora record")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``medlora.json``."""
        record: dict[str, Any] = {
            "kind": "training-run",
            "config": self.config,
            "base_model": None if self.base_model is None else str(self.base_model),
            "data_fingerprint": self.data_fingerprint,
            "train_records": self.train_records,
            "eval_records": self.eval_records,
            "adapter": {"source": self.adapter_source, "step": self.adapter_step},
            "metrics": _metrics_dict(self.metrics),
            "checkpoints": list(self.checkpoints),
            "versions": self.versions,
        }
        if self.held_out_split is not None:
            record["held_out"] = self.held_out_split.to_dict()
        if self.data_card is not None:
            record["data_card"] = _card_dict(self.data_card)
        record["world_size"] = self.world_size
        record["runtime"] = self.runtime
        return record | self.extra

    def write(self, run_dir: str | Path) -> Path:
        """Write ``medlora.json`` into ``run_dir``, atomically; returns its path."""
        path = Path(run_dir) / RECORD_FILE
        write_json(path, self.to_dict())
        return path

    def write_export(
        self, out_dir: str | Path, *, export_config: Mapping[str, Any], merge_strategy: str | None
    ) -> Path:
        """Write an export directory's ``medlora.json``: the export config, this record under
        ``training``, and the library versions; returns its path."""
        path = Path(out_dir) / RECORD_FILE
        record = {
            "kind": "export",
            "export_config": dict(export_config),
            "training": self.to_dict(),
            "merge_strategy": merge_strategy,
            "versions": library_versions(),
        }
        write_json(path, record)
        return path

    def training_config(self) -> TrainingConfig:
        """The run's config, rebuilt (raises :class:`~medlora.ConfigError` when this version
        no longer reads it)."""
        return TrainingConfig.from_dict(self.config)

    def quantization(self) -> QuantizationConfig | None:
        """How the base was quantized in training (None for plain LoRA)."""
        quant = self.config.get("quantization")
        return QuantizationConfig.from_dict(quant) if quant else None

    @property
    def max_seq_len(self) -> int:
        """The run's ``max_seq_len`` (1,024 when the record has none)."""
        return int(self.config.get("max_seq_len", 1024))

    def rebuild(self) -> RunData:
        """The run's training and held-out records, re-created from its config by the
        trainer's own code path (:func:`~medlora.training.run_data`); not checked: compare
        fingerprints, or use :meth:`held_out`."""
        return run_data(self.training_config())

    def held_out(self) -> ClinicalDataset:
        """Exactly the records the run held out, re-created by :meth:`rebuild` and checked
        against the fingerprint the run recorded (its training fingerprint for runs from
        before held-out splits were recorded).

        Raises:
            DatasetError: The run held out nothing, trained on datasets given in Python, or
                its data changed since.
        """
        split = self.held_out_split
        if split is not None and split.recipe in _NOT_HELD_OUT:
            raise DatasetError(
                f"the training run {_NOT_HELD_OUT[split.recipe]}; pass --data FILE of "
                "evaluation records"
            )
        rebuilt = self.rebuild()
        held = rebuilt.held_out
        if split is not None:
            same = held is not None and held.fingerprint == split.fingerprint
        else:
            same = held is not None and rebuilt.train.fingerprint == self.data_fingerprint
        if held is None or not same:
            raise DatasetError(
                "the records rebuilt from the run's config are not the ones it held out (the "
                "data file changed, or the run held out nothing); pass --data FILE of "
                "evaluation records"
            )
        return held


def _read_metrics(data: Mapping[str, Any]) -> RunMetrics:
    """``metrics`` of ``medlora.json``; unknown keys go to ``extra``."""
    names = {f.name for f in attrs.fields(RunMetrics)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    return RunMetrics(**known, extra={k: v for k, v in data.items() if k not in names})


def _metrics_dict(metrics: RunMetrics) -> dict[str, Any]:
    """The JSON form of ``metrics``, keys in the order runs have always written them."""
    out = attrs.asdict(metrics, recurse=False, filter=lambda a, _: a.name != "extra")
    out["timings"] = dict(metrics.timings)
    return out | dict(metrics.extra)


_DATASET_FIELDS = tuple(f.name for f in attrs.fields(DataCard))
_RUN_FIELDS = ("token_lengths", "duplicates_removed", "phi", "held_out_records", "contamination")


def _read_card(data: Mapping[str, Any]) -> RunDataCard:
    """``data_card`` of ``medlora.json``: the dataset's card at the top level, the run's
    additions beside it (``phi`` is ``"not checked"`` or counts per kind).

    Raises:
        ModelLoadError: A field of the dataset's card is missing.
    """
    missing = [name for name in _DATASET_FIELDS if name not in data]
    if missing:
        raise ModelLoadError(
            f"{RECORD_FILE}: data_card lacks {', '.join(missing)}; it was not written by "
            "medlora (remove data_card, or write the card ClinicalDataset.describe() gives)"
        )
    run = {k: data[k] for k in _RUN_FIELDS if k in data}
    if not isinstance(run.get("phi"), Mapping):
        run["phi"] = None
    extra = {k: v for k, v in data.items() if k not in _DATASET_FIELDS + _RUN_FIELDS}
    return RunDataCard(
        dataset=DataCard(**{k: data[k] for k in _DATASET_FIELDS}), **run, extra=extra
    )


def _card_dict(card: RunDataCard) -> dict[str, Any]:
    """The JSON form of ``data_card``, keys in the order runs have always written them."""
    out: dict[str, Any] = attrs.asdict(card.dataset)
    if card.token_lengths is not None:
        out["token_lengths"] = dict(card.token_lengths)
    if card.duplicates_removed is not None:
        out["duplicates_removed"] = dict(card.duplicates_removed)
    out["phi"] = "not checked" if card.phi is None else dict(card.phi)
    out["held_out_records"] = card.held_out_records
    out["contamination"] = card.contamination
    return out | dict(card.extra)
