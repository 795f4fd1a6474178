"""One raw record in, one validated :class:`ClinicalRecord` (or its problems) out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

import attrs

from medlora._errors import DatasetError, DatasetProblem
from medlora.data._records import KINDS, Message, detect_kind, normalise_layout, to_messages

OnError = Literal["raise", "skip"]


@attrs.frozen(kw_only=True)
class LoadOptions:
    """How raw records become :class:`ClinicalRecord` values: the options every
    ``ClinicalDataset.from_*`` constructor takes, checked once here.

    Raises:
        DatasetError: An option has a value no record could be read with.
    """

    kind: str | None = None
    """Force a kind instead of detecting it per record (one of ``medlora.data.KINDS``)."""
    field_map: Mapping[str, str] | None = None
    """Rename columns first, ``{"their_name": "our_name"}``."""
    system_prompt: str | None = None
    """Added as the system turn where a record has none."""
    group_by: str | None = None
    """Field holding a patient or encounter id, for grouped splits."""
    answer_index_base: int = 0
    """Whether integer multiple-choice answers count from 0 or 1 (MedMCQA's ``cop``: 1)."""
    on_error: OnError = "raise"
    """``"raise"`` (collect every problem, raise once) or ``"skip"`` (drop bad records)."""
    source: str = "<records>"
    """Name used in error messages (the file path for file constructors)."""

    def __attrs_post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise DatasetError(f"kind={self.kind!r} is unknown; choose one of {', '.join(KINDS)}")
        if self.on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error={self.on_error!r} must be 'raise' or 'skip'")
        if self.answer_index_base not in (0, 1):
            raise DatasetError(f"answer_index_base={self.answer_index_base!r} must be 0 or 1")


class LoadKeywords(TypedDict, total=False):
    """The keywords of every ``ClinicalDataset.from_*`` file constructor, typed for IDEs and
    mypy (``**options: Unpack[LoadKeywords]``): the fields of :class:`LoadOptions`, checked
    there; each one is optional."""

    kind: str | None
    field_map: Mapping[str, str] | None
    system_prompt: str | None
    group_by: str | None
    answer_index_base: int
    on_error: OnError
    source: str


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
    index: int | None = attrs.field(default=None, repr=False, eq=False)
    """Its 0-based position where it was read (the ``record_index`` of its problems)."""


@attrs.frozen(kw_only=True)
class LoadReport:
    """What loading found: kinds detected and records skipped."""

    source: str
    """File or description of where records came from."""
    kinds: Mapping[str, int]
    """Records per kind."""
    skipped: tuple[DatasetProblem, ...] = ()
    """Problems of records dropped with ``on_error="skip"``."""
    locate: Callable[[int], str] = attrs.field(
        default=lambda index: f"record {index}", repr=False, eq=False
    )
    """Names a ``record_index`` the way the source counts (``line 3``, ``index 2``, ``row 5``)."""


def settle_problems(
    problems: list[DatasetProblem], *, kept: int, options: LoadOptions, locate: Callable[[int], str]
) -> tuple[DatasetProblem, ...]:
    """Name each problem's place the way the file counts (``locate``), in file order; raise
    them all unless ``on_error="skip"``, or when no record is left. Returns those skipped."""
    problems.sort(key=lambda p: -1 if p.record_index is None else p.record_index)
    for problem in problems:
        if problem.location is None and problem.record_index is not None:
            problem.location = locate(problem.record_index)
    if problems and options.on_error != "skip":
        raise DatasetError(problems, hint="Fix these records, or pass on_error='skip'.")
    if not kept:
        raise DatasetError(
            [DatasetProblem("no usable records", path=options.source), *problems],
            hint="The file is empty or every record was skipped.",
        )
    return tuple(problems)


def fingerprint_update(digest: Any, record: ClinicalRecord) -> None:
    """Add ``record``'s training view to a SHA-256 ``digest`` (``ClinicalDataset.fingerprint``)."""
    digest.update(json.dumps([record.id, list(record.messages)], sort_keys=True).encode())


def validate_row(
    raw: Any, *, index: int, options: LoadOptions
) -> tuple[list[DatasetProblem], ClinicalRecord | None]:
    """Validate one raw record; returns its problems, or the record when it has none."""
    source, field_map, group_by = options.source, options.field_map, options.group_by
    if not isinstance(raw, Mapping):
        return [
            DatasetProblem(
                f"must be a JSON object, got {type(raw).__name__}", path=source, record_index=index
            )
        ], None
    record = {field_map.get(k, k): v for k, v in raw.items()} if field_map else dict(raw)
    record = normalise_layout(record)
    found = options.kind or detect_kind(record)
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
        record,
        index=index,
        kind=found,
        source=source,
        system_prompt=options.system_prompt,
        answer_index_base=options.answer_index_base,
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
        index=index,
    )
