"""ClinicalDataset: clinical records in, validated chat conversations out."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Unpack

import attrs

from medlora._errors import DatasetError, DatasetProblem, PHIDetectedError
from medlora.data._formats import (
    Locate,
    array_index,
    csv_lines,
    in_memory,
    iter_arrow,
    jsonl_line,
    load_arrow,
    load_hf,
    read_json,
    read_jsonl,
    table_row,
)
from medlora.data._hygiene import (
    DataCard,
    DedupReport,
    build_card,
    conversation_text,
    exact_duplicates,
    near_duplicates,
)
from medlora.data._phi import PHIDetector, PHIReport, scan_records
from medlora.data._prepare import PreparedData, Truncation, prepare
from medlora.data._tokenize import TokenizedExample, tokenize_batch
from medlora.data._validate import (
    ClinicalRecord,
    LoadKeywords,
    LoadOptions,
    LoadReport,
    OnError,
    fingerprint_update,
    settle_problems,
    validate_row,
)

PHIMode = Literal["report", "redact", "fail"]

DEFAULT_DATA = "clinical_synthetic.jsonl"


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
        answer_index_base: int = 0,
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
            answer_index_base: Whether integer multiple-choice answers count from 0 or 1
                (MedMCQA's original ``cop`` is 1-based).
            on_error: ``"raise"`` (collect every problem, raise once) or ``"skip"`` (drop bad
                records and list them in :attr:`report`).
            source: Name used in error messages.
        """
        options = LoadOptions(
            kind=kind,
            field_map=field_map,
            system_prompt=system_prompt,
            group_by=group_by,
            answer_index_base=answer_index_base,
            on_error=on_error,
            source=source,
        )
        return cls._build(enumerate(records), [], options, in_memory)

    @classmethod
    def _build(
        cls,
        rows: Iterable[tuple[int, Any]],
        read_problems: list[DatasetProblem],
        options: LoadOptions,
        locate: Locate,
    ) -> ClinicalDataset:
        """Validate located rows; merge their problems with those found reading the file, and
        name each problem's place the way the file counts (``locate``)."""
        problems: list[DatasetProblem] = list(read_problems)
        kept: list[ClinicalRecord] = []
        for index, raw in rows:
            record_problems, record = validate_row(raw, index=index, options=options)
            if record_problems:
                problems.extend(record_problems)
            elif record is not None:
                kept.append(record)
        skipped = settle_problems(problems, kept=len(kept), options=options, locate=locate)
        kinds = Counter(r.kind for r in kept)
        report = LoadReport(
            source=options.source, kinds=dict(kinds), skipped=skipped, locate=locate
        )
        return cls(tuple(kept), report)

    @classmethod
    def from_jsonl(cls, path: str | Path, **options: Unpack[LoadKeywords]) -> ClinicalDataset:
        """Load a JSON Lines file, one record per line (blank lines are ignored).

        Invalid JSON and non-UTF-8 lines are reported together with the records' own problems,
        each at its 1-based ``line N`` (``record_index`` is the 0-based line index). The
        keywords (:class:`~medlora.data.LoadKeywords`) are those of :meth:`from_records`.
        """
        path = Path(path)
        rows, problems = read_jsonl(path)
        options.setdefault("source", str(path))
        return cls._build(rows, problems, LoadOptions(**options), jsonl_line)

    @classmethod
    def from_json(cls, path: str | Path, **options: Unpack[LoadKeywords]) -> ClinicalDataset:
        """Load a JSON document: an array of records, ``{"data": [...]}`` (ACI-Bench), or an
        object keyed by id whose values hold ``QUESTION`` (PubMedQA's ``ori_pqal.json``).

        Problems name ``index N``, the 0-based position in the array (also ``record_index``).
        Options as :meth:`from_records`
        (ACI-Bench: ``field_map={"src": "note", "tgt": "summary"}``).
        """
        path = Path(path)
        options.setdefault("source", str(path))
        return cls._build(read_json(path), [], LoadOptions(**options), array_index)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        *,
        cache_dir: str | Path | None = None,
        **options: Unpack[LoadKeywords],
    ) -> ClinicalDataset:
        """Load a CSV file through ``datasets`` (memory-mapped Arrow under ``cache_dir``).

        Problems name the 1-based file ``line N`` where the record starts (quoted cells may
        span lines); ``record_index`` is the 0-based data row. Cells of
        ``messages``/``conversations``/``options``/``contexts`` may hold JSON text.
        """
        path = Path(path)
        table = load_arrow(path, "csv", cache_dir)
        options.setdefault("source", str(path))
        return cls._build(iter_arrow(table), [], LoadOptions(**options), csv_lines(path))

    @classmethod
    def from_parquet(
        cls,
        path: str | Path,
        *,
        cache_dir: str | Path | None = None,
        **options: Unpack[LoadKeywords],
    ) -> ClinicalDataset:
        """Load a Parquet file through ``datasets`` (memory-mapped Arrow under ``cache_dir``);
        problems name ``row N``, 0-based as in pandas and pyarrow (also ``record_index``)."""
        path = Path(path)
        table = load_arrow(path, "parquet", cache_dir)
        options.setdefault("source", str(path))
        return cls._build(iter_arrow(table), [], LoadOptions(**options), table_row)

    @classmethod
    def from_hf(
        cls, data: Any, *, split: str = "train", **options: Unpack[LoadKeywords]
    ) -> ClinicalDataset:
        """Load a ``datasets.Dataset``, a ``DatasetDict`` (its ``split``) or a directory written
        by ``save_to_disk``."""
        table = load_hf(data, split)
        source = str(data) if isinstance(data, (str, Path)) else f"<datasets:{split}>"
        options.setdefault("source", source)
        return cls._build(iter_arrow(table), [], LoadOptions(**options), table_row)

    @classmethod
    def default(cls, **options: Unpack[LoadKeywords]) -> ClinicalDataset:
        """The embedded synthetic clinical dataset (fictional patients; see its data card)."""
        ref = resources.files("medlora.data").joinpath("default", DEFAULT_DATA)
        with resources.as_file(ref) as path:
            options.setdefault("group_by", "patient_id")
            return cls.from_jsonl(path, **options)

    @classmethod
    def synthetic(
        cls, *, seed: int = 0, n_per_task: int | None = None, **options: Unpack[LoadKeywords]
    ) -> ClinicalDataset:
        """Freshly generated synthetic records (the embedded set's generator, fictional
        patients): ``n_per_task`` summarization, diagnosis, patient-education and
        multiple-choice records each (None: the embedded counts; ``seed=0`` then gives the
        embedded set). Grouped by ``patient_id`` unless ``group_by`` says otherwise."""
        from medlora.data._synthetic import generate_records

        options.setdefault("group_by", "patient_id")
        options.setdefault("source", f"<synthetic seed={seed}>")
        return cls.from_records(generate_records(seed=seed, n_per_task=n_per_task), **options)

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
            fingerprint_update(digest, record)
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
        keys = [split_key(r, grouped=grouped) for r in self.records]
        held = held_keys(keys, test_size=test_size, seed=seed)
        train = tuple(r for r, k in zip(self.records, keys, strict=True) if k not in held)
        test = tuple(r for r, k in zip(self.records, keys, strict=True) if k in held)
        return attrs.evolve(self, records=train), attrs.evolve(self, records=test)

    def three_way_split(
        self,
        *,
        validation_size: float = 0.1,
        test_size: float = 0.1,
        seed: int = 0,
        grouped: bool = True,
    ) -> tuple[ClinicalDataset, ClinicalDataset, ClinicalDataset]:
        """Deterministic train/validation/test split; a group (patient) stays in one part."""
        if not (0 < validation_size < 1 and 0 < test_size < 1 and validation_size + test_size < 1):
            raise DatasetError(
                f"validation_size={validation_size} and test_size={test_size} must be in (0, 1) "
                "and sum to less than 1"
            )
        rest, test = self.split(test_size=test_size, seed=seed, grouped=grouped)
        train, validation = rest.split(
            test_size=validation_size / (1 - test_size), seed=seed + 1, grouped=grouped
        )
        return train, validation, test

    def tokenize(
        self,
        tokenizer: Any,
        *,
        max_seq_len: int = 1024,
        assistant_only: bool = True,
        truncation: Truncation = "right",
    ) -> list[TokenizedExample]:
        """Template and tokenize every record, in batches (see :func:`tokenize_messages`).

        ``truncation="right"`` cuts long examples to ``max_seq_len`` (flagged ``truncated``);
        ``"drop"`` leaves them out. Use :meth:`prepare` for the counts, packing and caching.
        """
        if truncation not in ("right", "drop"):
            raise DatasetError(f"truncation={truncation!r} must be 'right' or 'drop'")
        with self._located():
            out = tokenize_batch(
                tokenizer,
                [r.messages for r in self.records],
                max_seq_len=max_seq_len,
                assistant_only=assistant_only,
            )
        return [e for e in out if not (truncation == "drop" and e.truncated)]

    def prepare(
        self,
        tokenizer: Any,
        *,
        max_seq_len: int = 1024,
        assistant_only: bool = True,
        truncation: Truncation = "right",
        pack: bool = False,
        cache_dir: str | Path | None = None,
    ) -> PreparedData:
        """Tokenize, truncate, drop examples with no supervised token, optionally pack.

        With ``cache_dir`` the result is saved under a key of data fingerprint, tokenizer hash
        and settings, and a later call with the same key loads it instead of recomputing.
        """
        with self._located():
            return prepare(
                tokenizer,
                [r.messages for r in self.records],
                fingerprint=self.fingerprint,
                max_seq_len=max_seq_len,
                assistant_only=assistant_only,
                truncation=truncation,
                pack=pack,
                cache_dir=cache_dir,
            )

    @contextlib.contextmanager
    def _located(self) -> Iterator[None]:
        """Problems raised about the n-th conversation name its file, record and line (or
        index, row) instead, as loading does."""
        try:
            yield
        except DatasetError as exc:
            relocate(exc, [r.index for r in self.records], self.report.source, self.report.locate)
            raise type(exc)(list(exc.problems), hint=exc.hint) from None

    # --- hygiene -----------------------------------------------------------------------------

    def duplicates(self, *, threshold: float = 0.8) -> tuple[list[tuple[str, ...]], list[Any]]:
        """Exact duplicate groups and near-duplicate pairs ``(id, id, jaccard)``."""
        texts = [conversation_text(r.messages) for r in self.records]
        ids = [r.id for r in self.records]
        exact = [tuple(ids[i] for i in g) for g in exact_duplicates(texts)]
        near = [(ids[i], ids[j], s) for i, j, s in near_duplicates(texts, threshold=threshold)]
        return exact, near

    def deduplicate(
        self, *, near: bool = False, threshold: float = 0.8
    ) -> tuple[ClinicalDataset, DedupReport]:
        """Drop exact duplicates (and with ``near`` near duplicates), keeping the first of each
        in file order; the report names what was removed and what it repeats."""
        texts = [conversation_text(r.messages) for r in self.records]
        ids = [r.id for r in self.records]
        drop: dict[int, tuple[int, float]] = {}
        for group in exact_duplicates(texts):
            drop.update((i, (group[0], 1.0)) for i in group[1:])
        if near:
            for i, j, score in near_duplicates(texts, threshold=threshold):
                if i not in drop and j not in drop:
                    drop[j] = (i, score)
        kept = tuple(r for i, r in enumerate(self.records) if i not in drop)
        removed = tuple((ids[j], ids[i], s) for j, (i, s) in sorted(drop.items()))
        report = DedupReport(mode="near" if near else "exact", removed=removed)
        return attrs.evolve(self, records=kept), report

    def contamination(
        self, other: ClinicalDataset, *, threshold: float = 0.8
    ) -> list[tuple[str, str, float]]:
        """Records of ``other`` (e.g. evaluation data) that (nearly) repeat one of these:
        ``(our id, their id, jaccard)``; the user turns are compared, so a prompt seen in
        training is caught even when the answer differs."""
        mine = [prompt_text(r) for r in self.records]
        theirs = [prompt_text(r) for r in other.records]
        pairs = near_duplicates(mine, others=theirs, threshold=threshold)
        return [(self.records[i].id, other.records[j].id, s) for i, j, s in pairs]

    def describe(self, *, near_threshold: float = 0.8) -> DataCard:
        """A frozen :class:`DataCard`: kinds, lengths, groups, duplicates, skipped records."""
        return build_card(
            source=self.report.source,
            fingerprint=self.fingerprint,
            kinds=Counter(r.kind for r in self.records),
            conversations=[r.messages for r in self.records],
            groups=[r.group for r in self.records],
            skipped=len(self.report.skipped),
            near_threshold=near_threshold,
        )

    def deidentify(
        self,
        *,
        mode: PHIMode = "redact",
        keep_year: bool = False,
        detector: PHIDetector | None = None,
        key: str | bytes | None = None,
    ) -> tuple[ClinicalDataset, PHIReport]:
        """Find HIPAA Safe Harbor identifiers in every message (offline, see ``medlora.data``).

        Args:
            mode: ``"report"`` (dataset unchanged), ``"redact"`` (identifiers replaced by
                ``[KIND]`` placeholders in every kept text field: the messages and the strings
                of each record's ``source``; groups replaced by keyed pseudonyms) or ``"fail"``
                (raise :class:`~medlora.PHIDetectedError` naming record indices and kinds, never
                the text).
            keep_year: Redact dates to ``[DATE:YYYY]``, keeping the year.
            detector: Which layers run (default :class:`~medlora.data.PHIDetector`: presidio
                when the ``phi`` extra is installed, else patterns with a warning).
            key: Key of the group pseudonyms; ``None``: ``$MEDLORA_PHI_KEY``, else a digest of
                these records (the same file always gives the same pseudonyms).
        """
        if mode not in ("report", "redact", "fail"):
            raise DatasetError(f"mode={mode!r} must be 'report', 'redact' or 'fail'")
        redacted, report = scan_records(
            self.records, redact=mode == "redact", keep_year=keep_year, detector=detector, key=key
        )
        if mode == "fail" and report.records:
            located = [self.records[i].index for i in report.records]
            raise phi_error(report, located, self.report.source, self.report.locate)
        if mode != "redact":
            return self, report
        return attrs.evolve(self, records=tuple(redacted)), report


def split_key(record: ClinicalRecord, *, grouped: bool = True) -> str:
    """What a split keeps together: the record's group (patient), else the record itself."""
    return record.group if grouped and record.group is not None else record.id


def held_keys(keys: Iterable[str], *, test_size: float, seed: int) -> set[str]:
    """The split keys held out: a seeded shuffle of the distinct keys, the first
    ``test_size`` of them (at least one)."""
    if not 0 < test_size < 1:
        raise DatasetError(f"test_size={test_size} must lie strictly between 0 and 1")
    unique = sorted(set(keys))
    random.Random(seed).shuffle(unique)
    n_test = max(1, round(len(unique) * test_size))
    return set(unique[:n_test])


def relocate(exc: DatasetError, indices: Sequence[int | None], source: str, locate: Locate) -> None:
    """Problems naming the n-th conversation name its file, record and line instead
    (``indices[n]``: where that record was read)."""
    for problem in exc.problems:
        at = problem.record_index
        if at is None or not 0 <= at < len(indices) or problem.location is not None:
            continue
        problem.record_index = index = indices[at]
        problem.path = problem.path or source
        problem.location = None if index is None else locate(index)


def phi_error(
    report: PHIReport, located: Sequence[int | None], source: str, locate: Locate
) -> PHIDetectedError:
    """The error of ``phi="fail"``: each record with PHI by file place and kinds (no text)."""
    problems = [
        DatasetProblem(
            f"contains PHI of kind {', '.join(report.kinds_by_record[i])}",
            path=source,
            record_index=at,
            location=None if at is None else locate(at),
        )
        for i, at in zip(report.records, located, strict=True)
    ]
    return PHIDetectedError(problems, hint="De-identify first: deidentify(mode='redact').")


def prompt_text(record: ClinicalRecord) -> str:
    """What a contamination check compares: the non-assistant turns."""
    return (
        "\n".join(m["content"] for m in record.messages if m["role"] != "assistant")
        or (record.messages[-1]["content"])
    )
