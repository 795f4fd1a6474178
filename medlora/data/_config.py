"""DataConfig: the ``data:`` section of a training config, and what loading it found.

Everything :class:`ClinicalDataset` can do from Python is reachable from a YAML file: any input
format, column renames, a forced kind, grouping, an explicit held-out file or fraction, PHI
handling and duplicate removal. :meth:`DataConfig.load` runs it all, before any model loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from medlora._config import ConfigBase, in_range, one_of
from medlora._errors import ConfigError
from medlora.data._arrow import ArrowDataset
from medlora.data._dataset import ClinicalDataset
from medlora.data._hygiene import DataCard, DedupReport
from medlora.data._phi import PHIDetector, PHIReport
from medlora.data._records import KINDS

Format = Literal["auto", "jsonl", "json", "csv", "parquet", "hf"]
FORMATS = ("auto", "jsonl", "json", "csv", "parquet", "hf")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _optional_str(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _field_map(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def _eval(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def file_format(path: str | Path, declared: str = "auto") -> str:
    """The reader for ``path``: ``declared``, or its extension (a directory: ``hf``)."""
    if declared != "auto":
        return declared
    found = "hf" if Path(path).is_dir() else _SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise ConfigError(
            f"data file {path} has an unknown extension; name it .jsonl, .json, .csv or "
            ".parquet, or set format: to one of jsonl, json, csv, parquet, hf.",
            field="format",
        )
    return found


@attrs.frozen(kw_only=True)
class DataConfig(ConfigBase):
    """Where a run's records come from and how they are checked (the ``data:`` section).

    ``data: PATH`` in a config file is shorthand for ``data: {path: PATH}``.
    """

    path: str | None = attrs.field(default=None, converter=_optional_str)
    """Records file or ``save_to_disk`` directory; ``None`` uses the embedded synthetic set."""
    format: Format = attrs.field(default="auto", validator=one_of(*FORMATS))
    """``auto`` (by extension: .jsonl, .json, .csv, .parquet; a directory is ``hf``) or one of
    ``jsonl``, ``json``, ``csv``, ``parquet``, ``hf``."""
    field_map: Mapping[str, str] | None = attrs.field(default=None, converter=_field_map)
    """Rename columns first, ``{their_name: our_name}``."""
    kind: str | None = attrs.field(default=None, validator=one_of(None, *KINDS))
    """Force one record kind instead of detecting it per record."""
    answer_index_base: int = attrs.field(default=0, validator=one_of(0, 1))
    """Whether integer multiple-choice answers count from 0 or 1 (MedMCQA's ``cop``: 1)."""
    system_prompt: str | None = None
    """System turn added to records that have none (replaces the run's ``system_prompt``)."""
    on_error: Literal["raise", "skip"] = attrs.field(
        default="raise", validator=one_of("raise", "skip")
    )
    """``raise``: list every bad record and stop; ``skip``: drop them and report them."""
    group_by: str | None = None
    """Field holding a patient or encounter id: its records stay on one side of the split
    (the embedded set: ``patient_id``)."""
    eval: str | float | None = attrs.field(default=None, converter=_eval)
    """Held-out records: a file (same options, format by its extension), or a fraction of the
    groups in (0, 0.5]; ``None``: the run's ``validation_fraction``."""
    phi: Literal["off", "report", "redact", "fail"] = attrs.field(
        default="off", validator=one_of("off", "report", "redact", "fail")
    )
    """De-identification: ``report`` counts identifiers by kind, ``redact`` replaces them with
    ``[KIND]`` in every kept text field and groups with keyed pseudonyms, ``fail`` stops naming
    records and kinds (never the text)."""
    phi_engine: Literal["auto", "presidio", "patterns"] = attrs.field(
        default="auto", validator=one_of("auto", "presidio", "patterns")
    )
    """``auto``: presidio with a spaCy pipeline when the ``phi`` extra is installed (names and
    places without cue words), else patterns only, with a warning; ``presidio`` requires it;
    ``patterns``: cue-based names only."""
    phi_model: str | None = None
    """spaCy English pipeline for ``presidio`` (``None``: ``en_core_web_sm`` if installed)."""
    dedup: Literal["off", "exact", "near"] = attrs.field(
        default="off", validator=one_of("off", "exact", "near")
    )
    """Remove duplicate records (``exact``; ``near`` also near duplicates), keeping the first."""
    near_threshold: float = attrs.field(default=0.8, converter=float, validator=in_range(0.5, 1.0))
    """Word 5-gram Jaccard similarity from which two records count as near duplicates."""
    backend: Literal["auto", "memory", "arrow"] = attrs.field(
        default="auto", validator=one_of("auto", "memory", "arrow")
    )
    """``memory``: records as Python objects (every format, near duplicates); ``arrow``: a
    JSON Lines file streamed through Arrow files on disk (:class:`~medlora.ArrowDataset`), for
    data larger than memory; ``auto``: ``arrow`` for a JSONL file above
    :attr:`arrow_threshold_mb`."""
    arrow_threshold_mb: float = attrs.field(
        default=500.0, converter=float, validator=in_range(0.0, 1e7)
    )
    """File size in MB (10^6 bytes) from which ``backend: auto`` streams through Arrow."""
    cache_dir: str | None = attrs.field(default=None, converter=_optional_str)
    """Where the Arrow backend writes its files (default ``~/.cache/medlora/arrow``)."""

    def __attrs_post_init__(self) -> None:
        if self.path is not None:
            file_format(self.path, self.format)
        elif self.format != "auto":
            raise ConfigError(
                f"format = {self.format!r} needs a path to a records file; set path or drop it.",
                field="format",
            )
        if isinstance(self.eval, float) and not 0 < self.eval <= 0.5:
            raise ConfigError(
                f"eval = {self.eval!r} is invalid: give a held-out file, or a fraction "
                "between 0 and 0.5 (e.g. 0.1).",
                field="eval",
            )
        if self.backend == "arrow":
            self._check_arrow()
        if self.eval is not None and not isinstance(self.eval, str | float):
            raise ConfigError(
                f"eval = {self.eval!r} is invalid: give a file path or a fraction such as 0.1.",
                field="eval",
            )

    def _check_arrow(self) -> None:
        if self.path is None or file_format(self.path, self.format) != "jsonl":
            raise ConfigError(
                f"backend = 'arrow' streams a JSON Lines file, but path = {self.path!r} is "
                "not one; convert the records to .jsonl, or set backend: memory.",
                field="backend",
            )
        if self.dedup == "near":
            raise ConfigError(
                "dedup = 'near' compares every pair of records in memory, which backend = "
                "'arrow' avoids; use dedup: exact, or backend: memory.",
                field="dedup",
            )

    def uses_arrow(self) -> bool:
        """Whether :meth:`load` streams the records through Arrow (``backend``, or ``auto``
        and a JSONL file above :attr:`arrow_threshold_mb` without ``dedup: near``)."""
        if self.backend != "auto":
            return self.backend == "arrow"
        if self.path is None or self.dedup == "near":
            return False
        if file_format(self.path, self.format) != "jsonl" or not Path(self.path).is_file():
            return False
        return Path(self.path).stat().st_size > self.arrow_threshold_mb * 1e6

    def _options(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field_map": self.field_map,
            "system_prompt": self.system_prompt,
            "group_by": self.group_by,
            "answer_index_base": self.answer_index_base,
            "on_error": self.on_error,
        }

    def read(self, path: str | None = None) -> ClinicalDataset:
        """Validate the records of ``path`` (default :attr:`path`) with these options, as is
        (no PHI handling or duplicate removal)."""
        path = self.path if path is None else path
        options = self._options()
        if path is None:
            options["group_by"] = options["group_by"] or "patient_id"
            return ClinicalDataset.default(**options)
        fmt = file_format(path, self.format if path == self.path else "auto")
        readers: dict[str, Callable[..., ClinicalDataset]] = {
            "jsonl": ClinicalDataset.from_jsonl,
            "json": ClinicalDataset.from_json,
            "csv": ClinicalDataset.from_csv,
            "parquet": ClinicalDataset.from_parquet,
            "hf": ClinicalDataset.from_hf,
        }
        return readers[fmt](path, **options)

    def load(self, *, progress: bool = True) -> LoadedData:
        """Read, validate, de-identify and deduplicate the records (and the ``eval`` file);
        ``progress``: progress bars of the Arrow backend.

        Raises:
            DatasetError: Bad records, each named by file, line (or index, row) and field.
            PHIDetectedError: ``phi: fail`` and identifiers were found.
        """
        records: ClinicalDataset | ArrowDataset
        if self.uses_arrow():
            records = self._stream(progress)
            phi, dedup = records.phi, records.dedup
        else:
            records, phi, dedup = self._clean(self.read())
        held: ClinicalDataset | None = None
        held_phi: PHIReport | None = None
        if isinstance(self.eval, str):
            held, held_phi, _ = self._clean(self.read(self.eval), dedup=False)
        return LoadedData(
            records=records, eval_records=held, phi=phi, eval_phi=held_phi, dedup=dedup
        )

    def _stream(self, progress: bool) -> ArrowDataset:
        """The records file through Arrow (see :class:`~medlora.ArrowDataset`)."""
        if self.path is None:  # pragma: no cover - uses_arrow() needs a path
            raise ConfigError("backend = 'arrow' needs a path", field="path")
        return ArrowDataset.from_jsonl(
            self.path,
            cache_dir=self.cache_dir,
            phi=self.phi,
            phi_detector=self._detector(),
            dedup=self.dedup,
            progress=progress,
            **self._options(),
        )

    def _detector(self) -> PHIDetector | None:
        if self.phi == "off":
            return None
        return PHIDetector(engine=self.phi_engine, spacy_model=self.phi_model)

    def _clean(
        self, dataset: ClinicalDataset, *, dedup: bool = True
    ) -> tuple[ClinicalDataset, PHIReport | None, DedupReport | None]:
        phi = None
        detector = self._detector()
        if self.phi != "off":
            dataset, phi = dataset.deidentify(mode=self.phi, detector=detector)
        removed = None
        if dedup and self.dedup != "off":
            dataset, removed = dataset.deduplicate(
                near=self.dedup == "near", threshold=self.near_threshold
            )
        return dataset, phi, removed


def data_config(value: Any) -> DataConfig | None:
    """A ``DataConfig`` from itself, a mapping (a YAML section) or a plain path (shorthand)."""
    if value is None or isinstance(value, DataConfig):
        return value
    if isinstance(value, str | Path):
        value = {"path": str(value)}
    if isinstance(value, Mapping):
        return DataConfig.from_dict(value, prefix="data.")
    raise ConfigError(
        f"data = {value!r} is invalid: give a file path or a mapping of data settings.",
        field="data",
    )


@attrs.frozen(kw_only=True)
class LoadedData:
    """What :meth:`DataConfig.load` produced: the records and what was done to them."""

    records: ClinicalDataset | ArrowDataset
    """The records to train on (and to split, without an ``eval`` file); on disk with the
    Arrow backend."""
    eval_records: ClinicalDataset | None
    """The records of the ``eval`` file, when one is given."""
    phi: PHIReport | None
    """PHI findings in :attr:`records` (``phi`` not ``off``)."""
    eval_phi: PHIReport | None
    """PHI findings in :attr:`eval_records`."""
    dedup: DedupReport | None
    """Duplicates removed (``dedup`` not ``off``)."""

    def card(self) -> DataCard:
        """The data card of :attr:`records`."""
        return self.records.describe()

    def summary(self, card: DataCard | None = None) -> list[str]:
        """A few lines for a terminal: counts, lengths, duplicates, PHI (never the text)."""
        card = card or self.card()
        kinds = ", ".join(f"{k} {v}" for k, v in card.kinds.items())
        groups = "" if card.groups is None else f" in {card.groups} groups"
        lines = [
            f"data: {card.source}",
            f"  records   {card.records}{groups} ({kinds}); skipped while loading: {card.skipped}",
            f"  length    characters median {card.chars['median']:g}, p95 {card.chars['p95']:g},"
            f" max {card.chars['max']:g}",
        ]
        if self.dedup is not None:
            lines.append(
                f"  dedup     removed {self.dedup.exact} exact and {self.dedup.near} near "
                "duplicates"
            )
        else:
            near = card.near_duplicate_pairs
            found = (
                "near duplicates not searched (arrow backend)"
                if near is None
                else f"{near} near-duplicate pairs found"
            )
            lines.append(
                f"  dedup     off; {card.exact_duplicate_groups} exact duplicate groups, {found}"
            )
        lines.append(f"  PHI       {_phi_line(self.phi)}")
        if self.eval_records is not None:
            lines.append(
                f"  eval file {self.eval_records.report.source}: {len(self.eval_records)} "
                f"records; PHI {_phi_line(self.eval_phi)}"
            )
        return lines


def _phi_line(report: PHIReport | None) -> str:
    if report is None:
        return "not checked (phi: off)"
    if not report.total:
        return "no identifiers found"
    kinds = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    return f"{report.total} identifiers in {len(report.records)} records ({kinds})"
