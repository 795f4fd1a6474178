"""The one exception tree of medlora.

Every error that a user can fix derives from :class:`MedLoraError` *and* from the builtin
it resembles, so both ``except MedLoraError`` and ``except ValueError`` work::

    MedLoraError
    ├── ConfigError (ValueError)            a config value or config file is wrong
    ├── DatasetError (ValueError)           records are missing, malformed or of the wrong type
    │   └── PHIDetectedError                protected health information found in mode="fail"
    ├── ModelLoadError (OSError)            a model directory or hub id cannot be loaded
    ├── MissingDependencyError (ImportError) an optional library is not installed
    ├── TrainingError (RuntimeError)        training cannot go on (e.g. the loss became NaN)
    │   └── OutOfMemoryError (MemoryError)  the accelerator ran out of memory
    └── ExportError (RuntimeError)          an export failed or did not pass its parity check
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "DatasetError",
    "ExportError",
    "MedLoraError",
    "MissingDependencyError",
    "ModelLoadError",
    "OutOfMemoryError",
    "PHIDetectedError",
    "TrainingError",
]


class MedLoraError(Exception):
    """Root of every error medlora raises on purpose."""


class ConfigError(MedLoraError, ValueError):
    """A configuration value or configuration file is invalid.

    Attributes:
        field: The offending field (``"lora.rank"``), when one field is to blame.
        path: The config file, when the value came from a file.
    """

    def __init__(self, message: str, *, field: str | None = None, path: Path | None = None):
        super().__init__(message)
        self.field = field
        self.path = path


class DatasetProblem:
    """One problem found in one record: where it is and what is wrong."""

    __slots__ = ("field", "location", "message", "path", "record_index")

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        record_index: int | None = None,
        field: str | None = None,
        location: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.record_index = record_index
        self.field = field
        self.location = location
        """Where in the file, as an editor or tool counts: ``line 3`` (JSONL, CSV: 1-based
        file line), ``index 2`` (JSON array), ``row 5`` (Parquet, datasets), ``record 2``."""

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.location is not None:
            where.append(self.location)
        elif self.record_index is not None:
            where.append(f"record {self.record_index}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __repr__(self) -> str:
        return f"DatasetProblem({str(self)!r})"


class DatasetError(MedLoraError, ValueError):
    """Records cannot be used: every problem found is listed in :attr:`problems`.

    Attributes:
        problems: Each bad record with its file, ``location`` (``line 3`` of a JSONL or CSV
            file, ``index 2`` of a JSON array, ``row 5`` of a Parquet file), 0-based
            ``record_index`` and field.
    """

    def __init__(self, problems: Sequence[DatasetProblem] | str, *, hint: str = "") -> None:
        if isinstance(problems, str):
            problems = [DatasetProblem(problems)]
        self.problems = list(problems)
        self.hint = hint
        """What to do about the problems (also the message's last line)."""
        shown = "\n".join(f"  - {p}" for p in self.problems[:20])
        more = len(self.problems) - 20
        if more > 0:
            shown += f"\n  ... and {more} more"
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the dataset:\n{shown}"
        super().__init__(head + (f"\n{hint}" if hint else ""))

    @property
    def path(self) -> str | None:
        """The file of the first problem."""
        return self.problems[0].path if self.problems else None

    @property
    def record_index(self) -> int | None:
        """The record index of the first problem."""
        return self.problems[0].record_index if self.problems else None

    @property
    def location(self) -> str | None:
        """The location (``line 3``, ``index 2``, ``row 5``) of the first problem."""
        return self.problems[0].location if self.problems else None

    @property
    def field(self) -> str | None:
        """The field of the first problem."""
        return self.problems[0].field if self.problems else None


class PHIDetectedError(DatasetError):
    """Protected health information was found while de-identifying in ``mode="fail"``.

    The message names record indices and identifier kinds only, never the text itself.
    """


class ModelLoadError(MedLoraError, OSError):
    """A model or tokenizer cannot be loaded from the given directory or hub id."""


class MissingDependencyError(MedLoraError, ImportError):
    """An optional dependency is needed for this feature but is not installed."""


class TrainingError(MedLoraError, RuntimeError):
    """Training cannot continue."""


class OutOfMemoryError(TrainingError, MemoryError):
    """The accelerator ran out of memory; the message says which setting to lower."""


class ExportError(MedLoraError, RuntimeError):
    """An export failed, or its parity check did not pass.

    Attributes:
        measurements: The measured parity numbers, when the failure is a parity failure.
    """

    def __init__(self, message: str, *, measurements: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.measurements = measurements or {}
