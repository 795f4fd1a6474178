"""ArrowDataset: records larger than memory, streamed through Arrow files on disk.

Every stage reads one record batch, works on it and writes it before it reads the next, so a
process holds one batch plus small state (20-byte hashes for exact duplicates, split keys):
JSON Lines -> validated records -> (PHI, exact dedup) -> Arrow records file -> token ids and
labels -> packed rows. Files are read with a plain (not memory-mapped) reader, so the pages
read go to the operating system's page cache and not to the process's resident set. Each
output is an Arrow stream as ``datasets`` writes it (``datasets.Dataset.from_file`` opens it),
written to a temporary name and renamed, under a cache key of the input file's content, the
options and (for tokens) the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Unpack

import attrs

from medlora._errors import ConfigError, DatasetError, DatasetProblem
from medlora._io import write_json
from medlora._optional import require
from medlora.data._arrow_io import (
    arrow_writer,
    batch_records,
    cache_key_of,
    default_cache_dir,
    file_digest,
    progress_bar,
    read_batches,
    record_row,
    record_schema,
)
from medlora.data._arrow_prepare import ArrowPrepared, pack_file, tokenize_file
from medlora.data._dataset import (
    ClinicalDataset,
    held_keys,
    phi_error,
    prompt_text,
    split_key,
)
from medlora.data._formats import iter_jsonl, jsonl_line
from medlora.data._hygiene import (
    DataCard,
    DedupReport,
    NearIndex,
    conversation_text,
    exact_key,
    length_stats,
)
from medlora.data._phi import KEY_ENV, PHIDetector, PHIReport, group_key, scan_records
from medlora.data._prepare import Truncation, tokenizer_hash
from medlora.data._validate import (
    ClinicalRecord,
    LoadKeywords,
    LoadOptions,
    LoadReport,
    fingerprint_update,
    settle_problems,
    validate_row,
)

PACK_WINDOW = 20_000
"""Examples packed together (best-fit-decreasing within each window)."""


@attrs.frozen(kw_only=True)
class _Stats:
    """What one pass over records counted."""

    records: int
    kinds: Mapping[str, int]
    fingerprint: str


def _write_records(records: Iterable[ClinicalRecord], target: Path) -> _Stats:
    """Write ``records`` to ``target``, counting kinds and the fingerprint on the way."""
    digest, kinds = hashlib.sha256(), Counter[str]()
    with arrow_writer(target, record_schema()) as out:
        for record in records:
            fingerprint_update(digest, record)
            kinds[record.kind] += 1
            out.add(**record_row(record))
    return _Stats(records=out.rows, kinds=dict(kinds), fingerprint=digest.hexdigest())


def _validated(
    path: Path, options: LoadOptions, problems: list[DatasetProblem], bar: Any
) -> Iterator[ClinicalRecord]:
    """The valid records of a JSONL file; every problem is appended to ``problems``."""
    for index, raw in iter_jsonl(path, problems):
        bar.update(1)
        found, record = validate_row(raw, index=index, options=options)
        problems.extend(found)
        if record is not None and not found:
            yield record


def _problem_json(p: DatasetProblem) -> dict[str, Any]:
    return {k: getattr(p, k) for k in ("message", "path", "record_index", "field", "location")}


def _problem(d: Mapping[str, Any]) -> DatasetProblem:
    return DatasetProblem(d["message"], **{k: v for k, v in d.items() if k != "message"})


@attrs.define(kw_only=True)
class _Cleaner:
    """PHI handling and exact duplicate removal, one batch at a time (as
    ``DataConfig.load`` does them in memory: PHI first, then duplicates)."""

    phi: str
    detector: PHIDetector | None
    key: bytes
    dedup: bool
    seen: dict[bytes, str] = attrs.field(factory=dict)
    removed: list[tuple[str, str, float]] = attrs.field(factory=list)
    counts: Counter[str] = attrs.field(factory=Counter)
    by_record: dict[int, tuple[str, ...]] = attrs.field(factory=dict)
    located: list[int | None] = attrs.field(factory=list)
    position: int = 0

    def batch(self, records: list[ClinicalRecord]) -> list[ClinicalRecord]:
        if self.phi != "off":
            redacted, report = scan_records(
                records,
                redact=self.phi == "redact",
                keep_year=False,
                detector=self.detector,
                key=self.key,
            )
            self.counts.update(report.counts)
            for i, kinds in report.kinds_by_record.items():
                self.by_record[self.position + i] = kinds
                self.located.append(records[i].index)
            records = redacted
        self.position += len(records)
        if not self.dedup:
            return records
        kept = []
        for record in records:
            key = exact_key(conversation_text(record.messages))
            if key in self.seen:
                self.removed.append((record.id, self.seen[key], 1.0))
            else:
                self.seen[key] = record.id
                kept.append(record)
        return kept

    def phi_report(self) -> PHIReport | None:
        return None if self.phi == "off" else self.findings()

    def findings(self) -> PHIReport:
        return PHIReport(
            counts=dict(sorted(self.counts.items())),
            records=tuple(self.by_record),
            kinds_by_record=dict(self.by_record),
        )

    def dedup_report(self) -> DedupReport | None:
        return DedupReport(mode="exact", removed=tuple(self.removed)) if self.dedup else None


PHIMode = Literal["off", "report", "redact", "fail"]
DedupMode = Literal["off", "exact", "near"]


@attrs.frozen(kw_only=True)
class ArrowDataset:
    """Validated clinical records in an Arrow file on disk, for data larger than memory.

    Build one with :meth:`from_jsonl`; records are read, checked (by the same code and with
    the same messages as :class:`~medlora.ClinicalDataset`), de-identified and deduplicated
    in batches, so memory stays bounded whatever the file's size. :meth:`prepare` tokenizes
    and packs the same way, and :meth:`to_hf` opens the records with ``datasets``.
    """

    path: Path
    """The records file (an Arrow stream; ``datasets.Dataset.from_file`` opens it)."""
    source: str
    """The JSONL file the records came from (error messages name it)."""
    num_records: int
    """How many records it holds."""
    kinds: Mapping[str, int]
    """Records per kind."""
    fingerprint: str
    """The same SHA-256 as ``ClinicalDataset.fingerprint`` of these records."""
    skipped: tuple[DatasetProblem, ...] = ()
    """Problems of records dropped with ``on_error="skip"``."""
    phi: PHIReport | None = None
    """PHI findings (``phi`` not ``off``)."""
    dedup: DedupReport | None = None
    """Duplicates removed (``dedup="exact"``)."""
    from_cache: bool = False
    """Whether the records file was already in the cache."""

    @classmethod
    def from_jsonl(
        cls,
        path: str | Path,
        *,
        cache_dir: str | Path | None = None,
        phi: PHIMode = "off",
        phi_detector: PHIDetector | None = None,
        phi_key: str | bytes | None = None,
        dedup: DedupMode = "off",
        progress: bool = True,
        **options: Unpack[LoadKeywords],
    ) -> ArrowDataset:
        """Stream a JSON Lines file into an Arrow records file under ``cache_dir``.

        Args:
            path: The JSONL file, one record per line.
            cache_dir: Where the Arrow files go (default ``~/.cache/medlora/arrow``); a later
                call with the same file content and options reuses them.
            phi: ``report``, ``redact`` or ``fail`` as ``ClinicalDataset.deidentify``.
            phi_detector: Which PHI layers run (default ``PHIDetector()``).
            phi_key: Key of the group pseudonyms (as ``ClinicalDataset.deidentify``).
            dedup: ``exact`` removes exact duplicates, keeping the first; ``near`` is not
                available for data on disk.
            progress: Show progress bars.
            **options: As ``ClinicalDataset.from_jsonl`` (:class:`~medlora.data.LoadKeywords`).

        Raises:
            DatasetError: Bad records, each named by file, 1-based line and field.
            PHIDetectedError: ``phi="fail"`` and identifiers were found.
            ConfigError: ``dedup="near"`` or an unknown mode.
        """
        if dedup not in ("off", "exact"):
            raise ConfigError(
                f"dedup={dedup!r} is not available for data on disk (near duplicates compare "
                "every pair of records in memory); use dedup='exact', or backend: memory.",
                field="dedup",
            )
        if phi not in ("off", "report", "redact", "fail"):
            raise ConfigError(f"phi={phi!r} must be off, report, redact or fail", field="phi")
        path = Path(path)
        options.setdefault("source", str(path))
        load = LoadOptions(**options)
        if not path.is_file():
            raise DatasetError([DatasetProblem("file does not exist", path=path)])
        key = cache_key_of(
            {
                "file": file_digest(path),
                "options": attrs.asdict(load),
                "phi": phi,
                "detector": repr(phi_detector),
                "phi_key": _secret_id(phi_key),
                "dedup": dedup,
            }
        )
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        target = cache / f"records-{key}.arrow"
        if target.is_file() and target.with_suffix(".json").is_file():
            return cls._from_meta(target)
        return _build(path, load, target, phi, phi_detector, phi_key, dedup, progress)

    @classmethod
    def _from_meta(cls, target: Path) -> ArrowDataset:
        meta = json.loads(target.with_suffix(".json").read_text())
        phi = meta["phi"]
        dedup = meta["dedup"]
        return cls(
            path=target,
            source=meta["source"],
            num_records=meta["records"],
            kinds=meta["kinds"],
            fingerprint=meta["fingerprint"],
            skipped=tuple(_problem(p) for p in meta["skipped"]),
            phi=None
            if phi is None
            else PHIReport(
                counts=phi["counts"],
                records=tuple(phi["records"]),
                kinds_by_record={int(k): tuple(v) for k, v in phi["kinds_by_record"].items()},
            ),
            dedup=None
            if dedup is None
            else DedupReport(mode=dedup["mode"], removed=tuple(map(tuple, dedup["removed"]))),
            from_cache=True,
        )

    def _write_meta(self) -> None:
        write_json(
            self.path.with_suffix(".json"),
            {
                "source": self.source,
                "records": self.num_records,
                "kinds": dict(self.kinds),
                "fingerprint": self.fingerprint,
                "skipped": [_problem_json(p) for p in self.skipped],
                "phi": None if self.phi is None else attrs.asdict(self.phi),
                "dedup": None if self.dedup is None else attrs.asdict(self.dedup),
            },
        )

    def __len__(self) -> int:
        return self.num_records

    def iter_records(self) -> Iterator[ClinicalRecord]:
        """The records, in file order, read one batch at a time."""
        for batch in read_batches(self.path):
            yield from batch_records(batch)

    def to_hf(self) -> Any:
        """The records file as a memory-mapped ``datasets.Dataset`` (``messages`` and
        ``source`` hold JSON text)."""
        datasets = require("datasets", "ArrowDataset.to_hf")
        return datasets.Dataset.from_file(str(self.path))

    def to_memory(self) -> ClinicalDataset:
        """The records as an in-memory :class:`~medlora.ClinicalDataset` (small data only)."""
        return _in_memory(list(self.iter_records()), self.source, self.skipped)

    def split(
        self, *, test_size: float = 0.1, seed: int = 0, grouped: bool = True
    ) -> tuple[ArrowDataset, ClinicalDataset]:
        """The split of ``ClinicalDataset.split`` (same groups, same seed, same records): the
        training part stays on disk, the held-out part is returned in memory (evaluation reads
        its records' fields)."""
        keys: set[str] = set()
        for batch in read_batches(self.path):
            cols = batch.select(["id", "group"]).to_pydict()
            keys.update(
                g if grouped and g is not None else i
                for i, g in zip(cols["id"], cols["group"], strict=True)
            )
        held_set = held_keys(keys, test_size=test_size, seed=seed)
        del keys
        held: list[ClinicalRecord] = []
        name = cache_key_of(
            {"of": self.fingerprint, "test_size": test_size, "seed": seed, "g": grouped}
        )
        target = self.path.with_name(f"train-{name}.arrow")

        def train() -> Iterator[ClinicalRecord]:
            for record in self.iter_records():
                if split_key(record, grouped=grouped) in held_set:
                    held.append(record)
                else:
                    yield record

        stats = _write_records(train(), target)
        part = attrs.evolve(
            self, path=target, num_records=stats.records, kinds=stats.kinds,
            fingerprint=stats.fingerprint, phi=None, dedup=None,
        )  # fmt: skip
        part._write_meta()
        return part, _in_memory(held, self.source, ())

    def head(self, n: int) -> ClinicalDataset:
        """The first ``n`` records in memory (e.g. calibration text for an export)."""
        out: list[ClinicalRecord] = []
        for batch in read_batches(self.path):
            out.extend(batch_records(batch.slice(0, n - len(out))))
            if len(out) >= n:
                break
        return _in_memory(out, self.source, ())

    def contamination(
        self, other: ClinicalDataset, *, threshold: float = 0.8
    ) -> list[tuple[str, str, float]]:
        """``ClinicalDataset.contamination``: records of ``other`` whose prompt (nearly)
        repeats one of these, ``(our id, their id, jaccard)``; ``other`` is indexed in memory
        and these records are read one batch at a time."""
        index = NearIndex([prompt_text(r) for r in other.records])
        out = []
        for batch in read_batches(self.path):
            mine = batch_records(batch)
            pairs = index.matches([prompt_text(r) for r in mine], threshold=threshold)
            out += [(mine[i].id, other.records[j].id, s) for i, j, s in pairs]
        return out

    def describe(self) -> DataCard:
        """The data card of ``ClinicalDataset.describe``, computed in one pass; near
        duplicates are not searched on disk (``near_duplicate_pairs`` is ``None``)."""
        chars: list[int] = []
        turns: list[int] = []
        groups: set[str] = set()
        exact: Counter[bytes] = Counter()
        for record in self.iter_records():
            text = conversation_text(record.messages)
            chars.append(len(text))
            turns.append(len(record.messages))
            exact[exact_key(text)] += 1
            if record.group is not None:
                groups.add(record.group)
        return DataCard(
            source=self.source,
            fingerprint=self.fingerprint,
            records=self.num_records,
            kinds=dict(sorted(self.kinds.items())),
            groups=len(groups) if groups else None,
            chars=length_stats(chars),
            turns=length_stats(turns),
            exact_duplicate_groups=sum(1 for n in exact.values() if n > 1),
            near_duplicate_pairs=None,
            skipped=len(self.skipped),
        )

    def prepare(
        self,
        tokenizer: Any,
        *,
        max_seq_len: int = 1024,
        assistant_only: bool = True,
        truncation: Truncation = "right",
        pack: bool = False,
        cache_dir: str | Path | None = None,
        pack_window: int = PACK_WINDOW,
        progress: bool = True,
    ) -> ArrowPrepared:
        """Tokenize (and pack) every record in batches into an Arrow file, as
        ``ClinicalDataset.prepare`` does in memory: the same examples, truncated and dropped
        alike; packing is best-fit-decreasing within windows of ``pack_window`` examples (the
        same rows as in memory when the data fits one window).

        Args:
            cache_dir: Where the token files go (default: beside the records file), under a
                key of the records' fingerprint, the tokenizer's hash and these settings.
        """
        settings = {
            "data": self.fingerprint,
            "tokenizer": tokenizer_hash(tokenizer),
            "max_seq_len": max_seq_len,
            "assistant_only": assistant_only,
            "truncation": truncation,
            "pack": pack_window if pack else None,
        }
        key = cache_key_of(settings)
        cache = Path(cache_dir) if cache_dir is not None else self.path.parent
        target = cache / f"tokens-{key}.arrow"
        meta = target.with_suffix(".json")
        if target.is_file() and meta.is_file():
            return ArrowPrepared.from_meta(target, json.loads(meta.read_text()))
        examples = cache / f"examples-{key}.arrow" if pack else target
        with progress_bar(self.num_records, "tokenize", progress) as bar:
            counts = tokenize_file(
                tokenizer, self.path, examples, source=self.source, bar=bar,
                max_seq_len=max_seq_len, assistant_only=assistant_only, truncation=truncation,
            )  # fmt: skip
        packing = None
        if pack:
            try:
                packing = pack_file(examples, target, max_seq_len, pack_window)
            finally:
                examples.unlink(missing_ok=True)
        rows = counts[0] if packing is None else packing.bins
        found: dict[str, Any] = {"rows": rows, "examples": counts[0], "truncated": counts[1]}
        found |= {"dropped": counts[2], "packed": pack, "cache_key": key}
        found["packing"] = None if packing is None else attrs.asdict(packing)
        write_json(meta, found)
        return ArrowPrepared.from_meta(target, found, from_cache=False)


def _secret_id(key: str | bytes | None) -> str | None:
    """A digest standing for a PHI key in a cache key (the key itself is never stored)."""
    key = key if key is not None else os.environ.get(KEY_ENV)
    if key is None:
        return None
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(b"medlora cache\0" + raw).hexdigest()


def _in_memory(
    records: Sequence[ClinicalRecord], source: str, skipped: tuple[DatasetProblem, ...]
) -> ClinicalDataset:
    kinds = Counter(r.kind for r in records)
    report = LoadReport(source=source, kinds=dict(kinds), skipped=skipped, locate=jsonl_line)
    return ClinicalDataset(tuple(records), report)


def _build(
    path: Path,
    load: LoadOptions,
    target: Path,
    phi: str,
    detector: PHIDetector | None,
    phi_key: str | bytes | None,
    dedup: str,
    progress: bool,
) -> ArrowDataset:
    """Validate ``path`` into ``target`` (through a validated file first when PHI or
    duplicates are handled); nothing is left at ``target`` when it fails."""
    problems: list[DatasetProblem] = []
    clean = phi != "off" or dedup != "off"
    first = target.with_name(f"valid-{target.name}") if clean else target
    try:
        with progress_bar(None, "validate", progress) as bar:
            stats = _write_records(_validated(path, load, problems, bar), first)
        try:
            skipped = settle_problems(problems, kept=stats.records, options=load, locate=jsonl_line)
        except DatasetError:
            first.unlink(missing_ok=True)
            raise
        found = ArrowDataset(
            path=target, source=load.source, num_records=stats.records, kinds=stats.kinds,
            fingerprint=stats.fingerprint, skipped=skipped,
        )  # fmt: skip
        if clean:
            found = _clean(found, first, phi, detector, phi_key, dedup == "exact")
    finally:
        if clean:
            first.unlink(missing_ok=True)
    found._write_meta()
    return found


def _clean(
    found: ArrowDataset,
    valid: Path,
    phi: str,
    detector: PHIDetector | None,
    phi_key: str | bytes | None,
    dedup: bool,
) -> ArrowDataset:
    """PHI and exact duplicates handled from the validated file into ``found.path``."""
    key = b""
    if phi == "redact":
        key = group_key((r for b in read_batches(valid) for r in batch_records(b)), phi_key)
    cleaner = _Cleaner(phi=phi, detector=detector, key=key, dedup=dedup)

    def records() -> Iterator[ClinicalRecord]:
        for batch in read_batches(valid):
            yield from cleaner.batch(batch_records(batch))
        if phi == "fail" and cleaner.by_record:
            raise phi_error(cleaner.findings(), cleaner.located, found.source, jsonl_line)

    stats = _write_records(records(), found.path)
    return attrs.evolve(
        found, num_records=stats.records, kinds=stats.kinds, fingerprint=stats.fingerprint,
        phi=cleaner.phi_report(), dedup=cleaner.dedup_report(),
    )  # fmt: skip
