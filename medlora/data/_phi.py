"""Offline PHI detection and redaction for HIPAA Safe Harbor's identifier kinds.

Regular expressions with context cues, no model and no network: structured identifiers (dates,
phone and fax numbers, e-mail, SSN, record/plan/account/licence/vehicle/device numbers, URLs,
IP addresses, ZIP codes, street addresses, ages over 89) are matched by shape or by the label
before them; person names only where a cue allows (a title such as ``Dr.``, a ``Patient:`` or
``Name:`` label, a signature line, a credential such as ``, MD``). Free-standing names with no
cue are *not* found: run a reviewed NER de-identifier as well before data leaves your site.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import attrs

PHI_KINDS = (
    "ACCOUNT",
    "ADDRESS",
    "AGE",
    "DATE",
    "DEVICE",
    "EMAIL",
    "IP",
    "LICENSE",
    "MRN",
    "NAME",
    "PHONE",
    "SSN",
    "URL",
    "VEHICLE",
    "ZIP",
)
"""Identifier kinds found (each redacts to ``[KIND]``)."""

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_STATES = [
    "AL",
    "AK",
    "AZ",
    "AR",
    "CA",
    "CO",
    "CT",
    "DE",
    "FL",
    "GA",
    "HI",
    "ID",
    "IL",
    "IN",
    "IA",
    "KS",
    "KY",
    "LA",
    "ME",
    "MD",
    "MA",
    "MI",
    "MN",
    "MS",
    "MO",
    "MT",
    "NE",
    "NV",
    "NH",
    "NJ",
    "NM",
    "NY",
    "NC",
    "ND",
    "OH",
    "OK",
    "OR",
    "PA",
    "RI",
    "SC",
    "SD",
    "TN",
    "TX",
    "UT",
    "VT",
    "VA",
    "WA",
    "WV",
    "WI",
    "WY",
    "DC",
]
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl"
    r"|Terrace|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq)\.?"
)
_NAME = r"[A-Z][a-zA-Z'\-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-zA-Z'\-]+)?"
_ID = r"(?=[A-Z\-]*\d)[A-Z0-9][A-Z0-9\-]{3,}"


def _cue(words: str) -> str:
    """``<cue words> [#:]? <identifier>``; the identifier is group ``v``."""
    return rf"\b(?:{words})\b\.?\s*(?:number|no\.?|num|#|id)?\s*[:#]?\s*(?P<v>{_ID})"


# (kind, pattern); group "v" (when present) is the part replaced, otherwise the whole match.
_PATTERNS: list[tuple[str, str]] = [
    ("EMAIL", r"\b[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+\b"),
    ("URL", r"\b(?:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;]"),
    ("IP", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    ("IP", r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"),
    ("SSN", r"\b\d{3}-\d{2}-\d{4}\b"),
    ("SSN", r"\b(?:SSN|social security(?: number)?)\s*[:#]?\s*(?P<v>\d{9})\b"),
    ("MRN", _cue(r"MRN|medical record|med rec|chart|record|patient id|hospital id")),
    (
        "ACCOUNT",
        _cue(
            r"account|acct|health plan|member|policy|insurance|subscriber|beneficiary|group"
            r"|claim|billing"
        ),
    ),
    ("LICENSE", _cue(r"licen[cs]e|DEA|NPI|certificate|cert|driver'?s licen[cs]e|DL")),
    ("VEHICLE", _cue(r"VIN|plate|license plate|vehicle(?: id)?")),
    ("VEHICLE", r"\b(?=[A-HJ-NPR-Z0-9]*\d)(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])[A-HJ-NPR-Z0-9]{17}\b"),
    ("DEVICE", _cue(r"serial|S/N|SN|device(?: id)?|UDI|IMEI|pacemaker id|implant id")),
    (
        "PHONE",
        r"(?<![\w/])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}"
        r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?![\w/])",
    ),
    ("DATE", r"\b\d{4}-\d{1,2}-\d{1,2}\b"),
    ("DATE", r"(?<![\d/])\d{1,2}[/\-.]\d{1,2}[/\-.](?:\d{4}|\d{2})(?![\d/])"),
    ("DATE", rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"),
    ("DATE", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}\b"),
    ("DATE", rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?!\s*(?:mg|ml|units|%))"),
    (
        "DATE",
        r"\b(?:January|February|March|April|June|July|August|September|October|November"
        r"|December)\s+\d{4}\b",
    ),
    (
        "ADDRESS",
        rf"\b\d{{1,6}}\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\s+){{1,3}}{_STREET}"
        r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[\w\-]+)?",
    ),
    ("ADDRESS", r"\bP\.?\s?O\.?\s+Box\s+\d+\b"),
    ("ZIP", rf"(?<=\b(?:{'|'.join(_STATES)})\s)(?P<v>\d{{5}}(?:-\d{{4}})?)\b"),
    ("ZIP", r"\b(?:ZIP|zip code|postal code|zipcode)\s*[:#]?\s*(?P<v>\d{5}(?:-\d{4})?)\b"),
    (
        "AGE",
        r"\b(?P<v>(?:9\d|1[0-2]\d))(?:\s*|-)(?:years?|yrs?|y/?o|yo)(?:[\s-]+old)?\b",
    ),
    ("AGE", r"\b(?:age|aged)\s*[:]?\s*(?P<v>(?:9\d|1[0-2]\d))\b"),
    ("NAME", rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof)\.?\s+(?P<v>{_NAME})"),
    (
        "NAME",
        rf"\b(?:Patient|Pt|Name|Patient name|Signed|Electronically signed by|Signed by|Attending"
        rf"|Physician|Provider|Nurse|Contact|Emergency contact|Next of kin|Guardian)\s*[:\-]"
        rf"\s*(?P<v>{_NAME})",
    ),
    ("NAME", rf"(?:Sincerely|Regards|Best regards|Thank you),?\s*\n\s*(?P<v>{_NAME})"),
    ("NAME", rf"(?P<v>{_NAME}),\s*(?:MD|M\.D\.|DO|RN|NP|PA-C|PA|MBBS|PhD|FNP|CNM|DDS)\b"),
]
_COMPILED = [
    (
        kind,
        re.compile(
            p,
            re.IGNORECASE
            if kind in ("MRN", "ACCOUNT", "LICENSE", "VEHICLE", "DEVICE", "SSN", "ZIP", "AGE")
            else 0,
        ),
    )
    for kind, p in _PATTERNS
]


@attrs.frozen
class PHISpan:
    """One identifier found: its kind and character span (the text itself is not kept)."""

    kind: str
    """One of :data:`PHI_KINDS`."""
    start: int
    """First character."""
    end: int
    """One past the last character."""


def find_phi(text: str) -> list[PHISpan]:
    """Every identifier in ``text``, sorted, overlaps resolved in favour of the longer span."""
    found: list[PHISpan] = []
    for kind, pattern in _COMPILED:
        for match in pattern.finditer(text):
            group = "v" if "v" in pattern.groupindex and match.group("v") else 0
            start, end = match.span(group)
            if end > start:
                found.append(PHISpan(kind, start, end))
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[PHISpan] = []
    for span in found:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return kept


def redact_text(text: str, *, keep_year: bool = False) -> tuple[str, list[PHISpan]]:
    """``text`` with each identifier replaced by ``[KIND]`` (dates by ``[DATE:YYYY]`` when
    ``keep_year`` and a year is present), and the spans found in the original."""
    spans = find_phi(text)
    out, at = [], 0
    for span in spans:
        out.append(text[at : span.start])
        placeholder = f"[{span.kind}]"
        if keep_year and span.kind == "DATE":
            year = re.search(r"(?:19|20)\d{2}", text[span.start : span.end])
            placeholder = f"[DATE:{year.group()}]" if year else placeholder
        out.append(placeholder)
        at = span.end
    out.append(text[at:])
    return "".join(out), spans


@attrs.frozen(kw_only=True)
class PHIReport:
    """What de-identification found: counts only, never the text."""

    counts: Mapping[str, int]
    """Identifiers found per kind."""
    records: tuple[int, ...]
    """Indices of the records that held at least one identifier."""
    kinds_by_record: Mapping[int, tuple[str, ...]] = attrs.field(factory=dict, repr=False)
    """Kinds found in each record with PHI."""

    @property
    def total(self) -> int:
        """Identifiers found in all."""
        return sum(self.counts.values())


def scan_messages(
    conversations: Iterable[Iterable[Mapping[str, str]]], *, redact: bool, keep_year: bool
) -> tuple[list[list[dict[str, str]]], PHIReport]:
    """Find (and optionally redact) PHI in every message of every conversation."""
    counts: Counter[str] = Counter()
    by_record: dict[int, tuple[str, ...]] = {}
    out: list[list[dict[str, str]]] = []
    for index, messages in enumerate(conversations):
        kinds: Counter[str] = Counter()
        new: list[dict[str, str]] = []
        for message in messages:
            text, spans = redact_text(message["content"], keep_year=keep_year)
            kinds.update(s.kind for s in spans)
            new.append({**message, "content": text if redact else message["content"]})
        out.append(new)
        if kinds:
            counts.update(kinds)
            by_record[index] = tuple(sorted(kinds))
    report = PHIReport(
        counts=dict(sorted(counts.items())), records=tuple(by_record), kinds_by_record=by_record
    )
    return out, report
