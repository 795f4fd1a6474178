"""PHI de-identification: recall and precision on a planted corpus, modes, ACI-Bench counts."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from medlora import ClinicalDataset, PHIDetectedError
from medlora.data import find_phi, redact_text

FIRST = ["Alan", "Maria", "Chen", "Fatima", "Olu", "Grace", "Ivan", "Priya", "Tom", "Lena"]
LAST = ["Grant", "Lopez", "Wei", "Haddad", "Adeyemi", "Kim", "Petrov", "Shah", "Novak", "Berg"]
MONTHS = ["January", "March", "Apr", "June", "Sept", "October", "December"]
STREETS = ["Maple Street", "Oak Avenue", "Harbor Road", "Elm Lane", "Cedar Drive", "Lake Blvd"]


def _values(rng: random.Random) -> dict[str, tuple[str, str]]:
    """One value per kind: (kind, text)."""
    d = rng.randint
    return {
        "date1": ("DATE", f"{d(1, 12):02d}/{d(1, 28):02d}/{d(1950, 2024)}"),
        "date2": ("DATE", f"{rng.choice(MONTHS)} {d(1, 28)}, {d(1950, 2024)}"),
        "date3": ("DATE", f"{d(1950, 2024)}-{d(1, 12):02d}-{d(1, 28):02d}"),
        "phone": ("PHONE", f"({d(200, 989)}) {d(200, 989)}-{d(0, 9999):04d}"),
        "fax": ("PHONE", f"{d(200, 989)}.{d(200, 989)}.{d(0, 9999):04d}"),
        "email": ("EMAIL", f"{rng.choice(FIRST).lower()}.{d(1, 99)}@clinic{d(1, 9)}.org"),
        "ssn": ("SSN", f"{d(100, 899)}-{d(10, 99)}-{d(1000, 9999)}"),
        "mrn": ("MRN", f"{d(10000000, 99999999)}"),
        "plan": ("ACCOUNT", f"HP-{d(100000, 999999)}"),
        "acct": ("ACCOUNT", f"{d(1000000, 9999999)}"),
        "lic": ("LICENSE", f"{rng.choice('ABCDEFG')}{d(1000000, 9999999)}"),
        "vin": (
            "VEHICLE",
            "1HGCM8"
            + "".join(rng.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(10))
            + str(d(0, 9)),
        ),
        "serial": ("DEVICE", f"SN{d(100000, 999999)}"),
        "url": ("URL", f"https://portal{d(1, 9)}.example.org/p/{d(100, 999)}"),
        "ip": ("IP", f"{d(1, 223)}.{d(0, 255)}.{d(0, 255)}.{d(1, 254)}"),
        "zip": ("ZIP", f"{d(10000, 99999)}"),
        "age": ("AGE", f"{d(90, 104)}"),
        "addr": ("ADDRESS", f"{d(1, 9999)} {rng.choice(STREETS)}"),
        "dr": ("NAME", f"{rng.choice(LAST)}"),
        "pt": ("NAME", f"{rng.choice(FIRST)} {rng.choice(LAST)}"),
    }


TEMPLATES = [
    "Patient: {pt} was seen on {date1} by Dr. {dr}. MRN: {mrn}. BP 128/82, HR 74, "
    "metformin 500 mg twice daily for 3 days.",
    "Admitted {date2}; discharged {date3}. Call {phone} or fax {fax}. E-mail {email}.",
    "SSN {ssn}. Health plan number: {plan}. Account #{acct}. Licence number {lic}.",
    "Vehicle VIN {vin} involved. Pacemaker serial number {serial}. Portal {url} from IP {ip}.",
    "Lives at {addr}, Springfield, IL {zip}. A {age}-year-old widow, HbA1c 7.9%, eGFR 52.",
    "A 45-year-old man with 2 of 3 criteria; troponin 0.04 ng/mL at 14:30, repeat in 6 hours.",
]
STRUCTURED = {
    "DATE",
    "PHONE",
    "EMAIL",
    "SSN",
    "MRN",
    "ACCOUNT",
    "LICENSE",
    "VEHICLE",
    "DEVICE",
    "URL",
    "IP",
    "ZIP",
    "AGE",
}


def planted_corpus(n: int, seed: int = 0) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Texts with the (kind, start, end) of every planted identifier."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        template = TEMPLATES[i % len(TEMPLATES)]
        values = _values(rng)
        # Built left to right, so the planted offsets are exact.
        text, located = template.split("{")[0], []
        for part in template.split("{")[1:]:
            key, rest = part.split("}", 1)
            kind, value = values[key]
            located.append((kind, len(text), len(text) + len(value)))
            text += value + rest
        out.append((text, located))
    return out


def measure(corpus: list[tuple[str, list[tuple[str, int, int]]]]) -> dict[str, float]:
    found_planted = Counter[str]()
    planted = Counter[str]()
    detections = true_detections = 0
    for text, spans in corpus:
        hits = find_phi(text)
        for kind, s, e in spans:
            planted[kind] += 1
            if any(h.kind == kind and h.start <= s and h.end >= e for h in hits):
                found_planted[kind] += 1
        for h in hits:
            detections += 1
            true_detections += any(h.start < e and s < h.end for _, s, e in spans)
    structured = sum(planted[k] for k in STRUCTURED)
    return {
        "recall_structured": sum(found_planted[k] for k in STRUCTURED) / structured,
        "recall_names": found_planted["NAME"] / planted["NAME"],
        "precision": true_detections / detections,
        **{f"recall_{k}": found_planted[k] / planted[k] for k in sorted(planted)},
    }


def test_planted_corpus_recall_and_precision() -> None:
    figures = measure(planted_corpus(600))
    print(json.dumps(figures, indent=1))
    assert figures["recall_structured"] >= 0.99
    assert figures["recall_names"] >= 0.95
    assert figures["precision"] >= 0.97


def test_clinical_numbers_are_not_phi() -> None:
    text = TEMPLATES[-1] + " Dose 2.5 mg/kg, BP 140/90, 8 weeks, room 12, 1-2 tabs, 37.5 C."
    assert find_phi(text) == []


def test_redact_replaces_with_typed_placeholders_and_keeps_year() -> None:
    text = "Seen on 03/14/2021 by Dr. Grant, MRN: 88812345, call (555) 010-2233."
    out, _ = redact_text(text, keep_year=True)
    assert out == "Seen on [DATE:2021] by Dr. [NAME], MRN: [MRN], call [PHONE]."


def test_modes_report_redact_fail_without_leaking_text() -> None:
    secret = "123-45-6789"
    ds = ClinicalDataset.from_records(
        [{"question": "Q?", "answer": "A."}, {"question": f"SSN {secret}, ok?", "answer": "Yes."}]
    )
    same, report = ds.deidentify(mode="report")
    assert same is ds and report.counts == {"SSN": 1} and report.records == (1,)
    redacted, _ = ds.deidentify(mode="redact")
    assert redacted[1].messages[0]["content"] == "SSN [SSN], ok?"
    with pytest.raises(PHIDetectedError) as info:
        ds.deidentify(mode="fail")
    assert info.value.record_index == 1 and "SSN" in str(info.value)
    assert secret not in str(info.value)


def test_aci_bench_counts_by_kind(shared_dir: Path) -> None:
    """Realistic check on ACI-Bench (CC BY 4.0, wyim/aci-bench; invented patients)."""
    path = shared_dir / "data" / "aci-bench" / "train.json"
    if not path.is_file():
        pytest.skip("ACI-Bench train.json is not in ../shared/data")
    ds = ClinicalDataset.from_json(path, field_map={"src": "note", "tgt": "summary"})
    _, report = ds.deidentify(mode="report")
    print(len(ds), "encounters,", len(report.records), "with PHI:", report.counts)
    assert len(ds) == 67
    assert report.counts.get("NAME", 0) > 0 and report.counts.get("DATE", 0) > 0
