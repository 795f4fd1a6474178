"""One raw record in, one validated :class:`ClinicalRecord` (or its problems) out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from medlora._errors import DatasetProblem
from medlora.data._records import Message, detect_kind, normalise_layout, to_messages


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


def validate_row(
    raw: Any,
    *,
    index: int,
    kind: str | None,
    field_map: Mapping[str, str] | None,
    system_prompt: str | None,
    group_by: str | None,
    answer_index_base: int,
    source: str,
) -> tuple[list[DatasetProblem], ClinicalRecord | None]:
    if not isinstance(raw, Mapping):
        return [
            DatasetProblem(
                f"must be a JSON object, got {type(raw).__name__}", path=source, record_index=index
            )
        ], None
    record = {field_map.get(k, k): v for k, v in raw.items()} if field_map else dict(raw)
    record = normalise_layout(record)
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
        record,
        index=index,
        kind=found,
        source=source,
        system_prompt=system_prompt,
        answer_index_base=answer_index_base,
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
