"""ClinicalDataset: clinical records in, validated chat conversations out."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import attrs

from medlora._errors import DatasetError, DatasetProblem
from medlora.data._records import KINDS, Message, detect_kind, to_messages
from medlora.data._tokenize import TokenizedExample, tokenize_messages

OnError = Literal["raise", "skip"]

DEFAULT_DATA = "clinical_synthetic.jsonl"


@attrs.frozen(kw_only=True)
class ClinicalRecord:
    """One validated record in its training view."""

    id: str
    """Stable identifier (the record's own ``id`` or ``<source>:<index>``)."""
    kind: str
    """Detected or declared record kind (``chat``, ``instruction``, ``multiple_choice``...)."""
    messages: tuple[Mapping[str, str], ...]
    """The conversation the model is trained on."""
    group: str | None = None
    """Value of the grouping field (a patient or encounter id), used for grouped splits."""
    source: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    """The original record, for evaluation tasks that need its structured fields."""


@attrs.frozen(kw_only=True)
class LoadReport:
    """What loading found: kinds detected and records skipped."""

    source: str
    """File or description of where records came from."""
    kinds: Mapping[str, int]
    """Records per kind."""
    skipped: tuple[DatasetProblem, ...] = ()
    """Problems of records dropped with ``on_error="skip"``."""


@attrs.frozen
class ClinicalDataset:
    """Validated clinical conversations, ready to template, tokenize and split.

    Build one with a named constructor (:meth:`from_jsonl`, :meth:`from_records`,
    :meth:`default`); every record is checked on the way in, and all problems are reported in
    one :class:`~medlora.DatasetError` naming file, record and field.
    """

    records: tuple[ClinicalRecord, ...]
    """The records, in file order."""
    report: LoadReport
    """What was detected and skipped while loading."""

    # --- constructors ------------------------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        kind: str | None = None,
        field_map: Mapping[str, str] | None = None,
        system_prompt: str | None = None,
        group_by: str | None = None,
        on_error: OnError = "raise",
        source: str = "<records>",
    ) -> ClinicalDataset:
        """Validate in-memory records (dicts) of any supported kind.

        Args:
            records: Mappings in one of the supported layouts (see ``medlora.data.KINDS``).
            kind: Force a kind instead of detecting it per record.
            field_map: Rename columns first, ``{"their_name": "our_name"}``.
            system_prompt: Added as the system turn where a record has none.
            group_by: Field holding a patient or encounter id, for grouped splits.
            on_error: ``"raise"`` (collect every problem, raise once) or ``"skip"`` (drop bad
                records and list them in :attr:`report`).
            source: Name used in error messages.
        """
        if kind is not None and kind not in KINDS:
            raise DatasetError(f"kind={kind!r} is unknown; choose one of {', '.join(KINDS)}")
        problems: list[DatasetProblem] = []
        skipped: list[DatasetProblem] = []
        kept: list[ClinicalRecord] = []
        for index, raw in enumerate(records):
            record_problems, record = _one(
                raw,
                index=index,
                kind=kind,
                field_map=field_map,
                system_prompt=system_prompt,
                group_by=group_by,
                source=source,
            )
            if record_problems:
                (skipped if on_error == "skip" else problems).extend(record_problems)
            elif record is not None:
                kept.append(record)
        if problems:
            raise DatasetError(problems, hint="Fix these records, or pass on_error='skip'.")
        if not kept:
            raise DatasetError(
                [DatasetProblem("no usable records", path=source)],
                hint="The file is empty or every record was skipped.",
            )
        kinds = Counter(r.kind for r in kept)
        report = LoadReport(source=source, kinds=dict(kinds), skipped=tuple(skipped))
        return cls(tuple(kept), report)

    @classmethod
    def from_jsonl(cls, path: str | Path, **options: Any) -> ClinicalDataset:
        """Load a JSON Lines file, one record per line (blank lines are ignored).

        Invalid JSON, non-object lines and non-UTF-8 bytes are reported with their line number
        (``record_index`` is the 0-based line index). Other options as :meth:`from_records`.
        """
        path = Path(path)
        if not path.is_file():
            raise DatasetError([DatasetProblem("file does not exist", path=path)])
        problems: list[DatasetProblem] = []
        rows: list[tuple[int, Any]] = []
        with path.open("rb") as handle:
            for index, raw_line in enumerate(handle):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.append(
                        DatasetProblem(
                            f"line {index + 1} is not valid UTF-8 (byte {exc.start}); re-save the "
                            "file as UTF-8",
                            path=path,
                            record_index=index,
                        )
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    rows.append((index, json.loads(line)))
                except json.JSONDecodeError as exc:
                    problems.append(
                        DatasetProblem(
                            f"line {index + 1} is not valid JSON ({exc.msg} at column {exc.colno})",
                            path=path,
                            record_index=index,
                        )
                    )
        on_error = options.get("on_error", "raise")
        if problems and on_error != "skip":
            raise DatasetError(problems, hint="Fix these lines, or pass on_error='skip'.")
        dataset = cls._from_indexed(rows, source=str(path), **options)
        if problems:
            report = attrs.evolve(dataset.report, skipped=tuple(problems) + dataset.report.skipped)
            dataset = attrs.evolve(dataset, report=report)
        return dataset

    @classmethod
    def _from_indexed(cls, rows: list[tuple[int, Any]], **options: Any) -> ClinicalDataset:
        """from_records, keeping the original line numbers as record indices."""
        by_position = {pos: index for pos, (index, _) in enumerate(rows)}
        try:
            return cls.from_records((row for _, row in rows), **options)
        except DatasetError as exc:
            for problem in exc.problems:
                if problem.record_index is not None:
                    problem.record_index = by_position.get(problem.record_index)
            raise DatasetError(
                exc.problems, hint="Fix these records, or pass on_error='skip'."
            ) from None

    @classmethod
    def default(cls, **options: Any) -> ClinicalDataset:
        """The embedded synthetic clinical dataset (fictional patients; see its data card)."""
        ref = resources.files("medlora.data").joinpath("default", DEFAULT_DATA)
        with resources.as_file(ref) as path:
            options.setdefault("group_by", "patient_id")
            return cls.from_jsonl(path, **options)

    # --- access ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ClinicalRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> ClinicalRecord:
        return self.records[index]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the training view of every record (stable across runs)."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(json.dumps([record.id, list(record.messages)], sort_keys=True).encode())
        return digest.hexdigest()

    # --- transforms --------------------------------------------------------------------------

    def filter_kinds(self, *kinds: str) -> ClinicalDataset:
        """Only the records of the given kinds."""
        kept = tuple(r for r in self.records if r.kind in kinds)
        return attrs.evolve(self, records=kept)

    def split(
        self, *, test_size: float = 0.1, seed: int = 0, grouped: bool = True
    ) -> tuple[ClinicalDataset, ClinicalDataset]:
        """Deterministic train/held-out split.

        Args:
            test_size: Fraction of records (or of groups) held out, in (0, 1).
            seed: Same seed, same split.
            grouped: Keep every record of one group (patient) on the same side, when records
                have a group.
        """
        if not 0 < test_size < 1:
            raise DatasetError(f"test_size={test_size} must lie strictly between 0 and 1")
        keys = [r.group if grouped and r.group is not None else r.id for r in self.records]
        unique = sorted(set(keys))
        random.Random(seed).shuffle(unique)
        n_test = max(1, round(len(unique) * test_size))
        held = set(unique[:n_test])
        train = tuple(r for r, k in zip(self.records, keys, strict=True) if k not in held)
        test = tuple(r for r, k in zip(self.records, keys, strict=True) if k in held)
        return attrs.evolve(self, records=train), attrs.evolve(self, records=test)

    def tokenize(
        self, tokenizer: Any, *, max_seq_len: int = 1024, assistant_only: bool = True
    ) -> list[TokenizedExample]:
        """Template and tokenize every record (see :func:`tokenize_messages`)."""
        return [
            tokenize_messages(
                tokenizer, list(r.messages), max_seq_len=max_seq_len, assistant_only=assistant_only
            )
            for r in self.records
        ]


def _one(
    raw: Any,
    *,
    index: int,
    kind: str | None,
    field_map: Mapping[str, str] | None,
    system_prompt: str | None,
    group_by: str | None,
    source: str,
) -> tuple[list[DatasetProblem], ClinicalRecord | None]:
    if not isinstance(raw, Mapping):
        return [
            DatasetProblem(
                f"must be a JSON object, got {type(raw).__name__}", path=source, record_index=index
            )
        ], None
    record = {field_map.get(k, k): v for k, v in raw.items()} if field_map else dict(raw)
    found = kind or detect_kind(record)
    if found is None:
        keys = ", ".join(sorted(record)) or "none"
        return [
            DatasetProblem(
                f"layout not recognised (keys: {keys}); expected e.g. 'messages', "
                "'instruction'+'output', 'question'+'answer', or pass kind=/field_map=",
                path=source,
                record_index=index,
            )
        ], None
    messages, problems = to_messages(
        record, index=index, kind=found, source=source, system_prompt=system_prompt
    )
    group = record.get(group_by) if group_by else None
    if group_by and group is None:
        problems.append(
            DatasetProblem(
                "group field is missing", path=source, record_index=index, field=group_by
            )
        )
    if problems:
        return problems, None
    rid = record.get("id")
    messages_t: tuple[Message, ...] = tuple(messages)
    return [], ClinicalRecord(
        id=str(rid) if rid is not None else f"{source}:{index}",
        kind=found,
        messages=messages_t,
        group=None if group is None else str(group),
        source=record,
    )
