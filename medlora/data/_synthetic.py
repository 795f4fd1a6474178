"""Deterministic generator of the shipped synthetic clinical dataset.

Every patient, clinician, place and identifier produced here is invented: names are glued
together from nonsense syllables, MRNs start with ``FAKE-``, phone numbers use the reserved
``555-01xx`` block, e-mails use ``example.org`` and dates fall in 2091-2093. Not for clinical
use.

The tables are data files beside this module: ``synthetic/conditions.yaml`` (25 conditions at
a general textbook level, written for this project) and ``synthetic/phrases.yaml`` (name and
place syllables, vital-sign ranges, the phrasing of notes, questions and answers). This module
is only the sampling and the sentence templates that tie the sampled facts together.

Run ``python -m medlora.data._synthetic`` to regenerate
``medlora/data/default/clinical_synthetic.jsonl`` byte for byte.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medlora._io import atomic_file

DEFAULT_PATH = Path(__file__).parent / "default" / "clinical_synthetic.jsonl"
"""Where the shipped file lives inside the package."""

TASK_COUNTS: dict[str, int] = {
    "summarization": 84,
    "diagnosis_qa": 96,
    "patient_education": 84,
    "multiple_choice": 96,
}
"""Records per task when ``n_per_task`` is not given (order is the order in the file)."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    """One row of the built-in knowledge table (general textbook level, not advice)."""

    name: str
    """Clinical name, lower case (``"community-acquired pneumonia"``)."""
    lay: str
    """Plain-language name a patient would use."""
    about: str
    """Plain-language explanation of what the condition is."""
    ages: tuple[int, int]
    """Typical age range (inclusive) used when sampling patients."""
    sexes: str
    """Sexes to sample from: ``"FM"``, ``"F"`` or ``"M"``."""
    symptoms: tuple[str, ...]
    """Typical symptoms as short noun phrases."""
    findings: tuple[str, ...]
    """Typical exam or bedside findings."""
    vitals: dict[str, tuple[float, float]]
    """Vital-sign ranges that differ from the normal defaults."""
    tests: tuple[str, ...]
    """First tests, most useful first."""
    management: str
    """First-line management as a clause (no dosing)."""
    differentials: tuple[str, ...]
    """Names of other table conditions worth considering."""
    clue: str
    """The combination of features that points to this condition."""
    self_care: str
    """Plain-language treatment and self-care sentence(s)."""
    red_flags: str
    """Plain-language warning signs that need prompt care."""
    drug: str
    """A common first-line medicine or measure."""
    drug_use: str
    """Plain-language explanation of what the medicine does."""
    drug_side: str
    """Plain-language side effects and tips."""
    onset: str = "days"
    """Usual time unit of the history: ``"hours"``, ``"days"`` or ``"weeks"``."""


_TABLES = resources.files("medlora.data").joinpath("synthetic")
"""The data the generator writes with: ``conditions.yaml`` (the knowledge table) and
``phrases.yaml`` (fictional name syllables, vital-sign ranges, phrasing)."""


def _frozen(value: Any) -> Any:
    """YAML lists as tuples, all the way down (the tables are sampled, never changed)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _table(name: str) -> Any:
    return _frozen(yaml.safe_load(_TABLES.joinpath(name).read_text(encoding="utf-8")))


_PHRASES: dict[str, Any] = _table("phrases.yaml")


CONDITIONS: tuple[Condition, ...] = tuple(Condition(**row) for row in _table("conditions.yaml"))
"""The knowledge table: 25 common conditions, general textbook level, in our own words."""

_BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}

# ---------------------------------------------------------------- fictional people and places

_FIRST_HEADS: tuple[str, ...] = _PHRASES["first_heads"]
_FIRST_TAILS: tuple[str, ...] = _PHRASES["first_tails"]
_LAST_HEADS: tuple[str, ...] = _PHRASES["last_heads"]
_LAST_TAILS: tuple[str, ...] = _PHRASES["last_tails"]
_PLACE_HEADS: tuple[str, ...] = _PHRASES["place_heads"]
_PLACE_TAILS: tuple[str, ...] = _PHRASES["place_tails"]
_PLACE_KINDS: tuple[str, ...] = _PHRASES["place_kinds"]

_FIRST_VISIT = datetime.date(2091, 1, 1)
_VISIT_SPAN_DAYS = 3 * 365
_N_PATIENTS = 400


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Patient:
    pid: str
    first: str
    last: str
    sex: str
    dob: datetime.date
    mrn: str
    phone: str

    def age_on(self, day: datetime.date) -> int:
        before_birthday = (day.month, day.day) < (self.dob.month, self.dob.day)
        return day.year - self.dob.year - int(before_birthday)


def _person_name(rng: random.Random) -> tuple[str, str]:
    first = rng.choice(_FIRST_HEADS) + rng.choice(_FIRST_TAILS)
    last = rng.choice(_LAST_HEADS) + rng.choice(_LAST_TAILS)
    return first, last


def _patients(seed: int) -> list[_Patient]:
    rng = random.Random(f"{seed}-patients")
    oldest = datetime.date(2001, 1, 1)
    span = (datetime.date(2089, 1, 1) - oldest).days
    people = []
    for number in range(1, _N_PATIENTS + 1):
        first, last = _person_name(rng)
        people.append(
            _Patient(
                pid=f"P-{number:04d}",
                first=first,
                last=last,
                sex=rng.choice("FM"),
                dob=oldest + datetime.timedelta(days=rng.randrange(span)),
                mrn=f"FAKE-{rng.randrange(10**6):06d}",
                phone=f"555-01{rng.randrange(100):02d}",
            )
        )
    return people


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Case:
    """One sampled encounter: the single source of every fact a record states."""

    patient: _Patient
    condition: Condition
    visit: datetime.date
    age: int
    symptoms: tuple[str, ...]
    findings: tuple[str, ...]
    vitals: dict[str, float]
    duration: str

    @property
    def noun(self) -> str:
        if self.age < 18:
            return "girl" if self.patient.sex == "F" else "boy"
        return "woman" if self.patient.sex == "F" else "man"

    @property
    def features(self) -> str:
        """The sampled presentation in a phrase: two symptoms and the first finding."""
        return f"{_join(self.symptoms[:2])} with {self.findings[0]}"

    @property
    def a_age(self) -> str:
        article = "an" if str(self.age).startswith("8") or self.age in (11, 18) else "a"
        return f"{article} {self.age}-year-old"


_NORMAL_VITALS: dict[str, tuple[float, float]] = _PHRASES["normal_vitals"]
_CHILD_VITALS: dict[str, tuple[float, float]] = _PHRASES["child_vitals"]


def _sample_vitals(rng: random.Random, condition: Condition, age: int) -> dict[str, float]:
    ranges = dict(_NORMAL_VITALS)
    if age < 12:
        ranges.update(_CHILD_VITALS)
    ranges.update(condition.vitals)
    vitals = {}
    for key, (low, high) in ranges.items():
        value = rng.uniform(low, high)
        vitals[key] = round(value, 1) if key == "temp" else float(round(value))
    return vitals


def _duration(rng: random.Random, onset: str) -> str:
    if onset == "hours":
        count, unit = rng.choice((6, 8, 10, 12, 18, 24, 36)), "hours"
    elif onset == "weeks":
        count, unit = rng.randint(2, 12), "weeks"
    else:
        count, unit = rng.randint(1, 7), "days"
    return f"1 {unit[:-1]}" if count == 1 else f"{count} {unit}"


def _sample_case(
    rng: random.Random, people: list[_Patient], condition: Condition, min_age: int = 0
) -> _Case:
    visit = _FIRST_VISIT + datetime.timedelta(days=rng.randrange(_VISIT_SPAN_DAYS))
    low, high = condition.ages
    if min_age <= high:
        low = max(low, min_age)
    sex = rng.choice(condition.sexes)
    fits = [p for p in people if p.sex == sex and low <= p.age_on(visit) <= high]
    patient = rng.choice(fits)
    age = patient.age_on(visit)
    n_symptoms = min(len(condition.symptoms), rng.randint(2, 4))
    n_findings = min(len(condition.findings), rng.randint(1, 2))
    return _Case(
        patient=patient,
        condition=condition,
        visit=visit,
        age=age,
        symptoms=tuple(rng.sample(condition.symptoms, n_symptoms)),
        findings=tuple(rng.sample(condition.findings, n_findings)),
        vitals=_sample_vitals(rng, condition, age),
        duration=_duration(rng, condition.onset),
    )


# ---------------------------------------------------------------- phrasing helpers


def _join(items: tuple[str, ...] | list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _vitals_line(v: dict[str, float]) -> str:
    return (
        f"T {v['temp']:.1f} C, HR {v['hr']:.0f}, BP {v['sbp']:.0f}/{v['dbp']:.0f}, "
        f"RR {v['rr']:.0f}, SpO2 {v['spo2']:.0f}% on room air"
    )


def _abnormal_vitals(v: dict[str, float], age: int) -> list[str]:
    """Plain statements of the out-of-range vitals, computed from the same numbers."""
    notes = []
    if v["temp"] >= 38.0:
        notes.append(f"fever to {v['temp']:.1f} C")
    if age >= 12 and v["hr"] > 100:
        notes.append(f"tachycardia at {v['hr']:.0f}/min")
    if age >= 12 and v["hr"] < 60:
        notes.append(f"bradycardia at {v['hr']:.0f}/min")
    if age >= 12 and (v["sbp"] >= 140 or v["dbp"] >= 90):
        notes.append(f"blood pressure of {v['sbp']:.0f}/{v['dbp']:.0f}")
    if age >= 12 and v["rr"] > 20:
        notes.append(f"respiratory rate of {v['rr']:.0f}")
    if v["spo2"] < 95:
        notes.append(f"oxygen saturation of {v['spo2']:.0f}% on room air")
    return notes


_SYSTEM_PROMPTS: dict[str, tuple[str, ...]] = _PHRASES["system_prompts"]
_NO_SYSTEM_RATE = 0.15


def _messages(rng: random.Random, task: str, turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = []
    if rng.random() >= _NO_SYSTEM_RATE:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS[task])})
    messages.extend({"role": role, "content": content} for role, content in turns)
    return messages


def _record(task: str, case: _Case, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"task": task, "patient_id": case.patient.pid, "messages": messages, **extra}


# ---------------------------------------------------------------- task 1: summarization

_HISTORY: tuple[tuple[str, tuple[str, ...]], ...] = tuple(_PHRASES["history"].items())
_ALLERGIES: tuple[str, ...] = _PHRASES["allergies"]
_SENTENCE_END = (".", "!", "?")
_SOCIAL: tuple[str, ...] = _PHRASES["social"]
_MIN_NOTE_WORDS = 80
_NOTE_KINDS: tuple[str, ...] = _PHRASES["note_kinds"]


def _medication(rng: random.Random, template: str) -> str:
    head, brace, rest = template.partition("{")
    if not brace:
        return template
    options, _, tail = rest.partition("}")
    return head + rng.choice(options.split("|")) + tail


def _history(rng: random.Random, case: _Case) -> list[tuple[str, str]]:
    if case.age < 18:
        return []
    excluded = case.condition.name + " " + case.condition.lay
    pool = [item for item in _HISTORY if item[0] not in excluded]
    picked = rng.sample(pool, rng.choice((0, 1, 1, 2, 2, 3)))
    return [(label, _medication(rng, rng.choice(meds))) for label, meds in picked]


def _identifier_lines(rng: random.Random, case: _Case) -> list[str]:
    p = case.patient
    title = "" if case.age < 18 else ("Ms. " if p.sex == "F" else "Mr. ")
    mrn = p.mrn
    doc_first, doc_last = _person_name(rng)
    place = f"{rng.choice(_PLACE_HEADS)}{rng.choice(_PLACE_TAILS)} {rng.choice(_PLACE_KINDS)}"
    lines = [
        rng.choice(
            (
                f"Patient: {title}{p.first} {p.last} | MRN: {mrn} | DOB: {p.dob.isoformat()}",
                f"Name: {p.first} {p.last}, DOB {p.dob.isoformat()}, MRN {mrn}",
                f"{title}{p.first} {p.last} (MRN {mrn}, born {p.dob.isoformat()})",
            )
        )
    ]
    lines.append(f"Seen {case.visit.isoformat()} at {place} by Dr. {doc_first} {doc_last}.")
    if rng.random() < 0.6:
        phone = p.phone
        email = f"{p.first.lower()}.{p.last.lower()}@example.org"
        lines.append(
            rng.choice(
                (
                    f"Contact: {phone}, {email}.",
                    f"Phone {phone}; e-mail {email}.",
                    f"Best contact number {phone}.",
                )
            )
        )
    return lines


def _note(
    rng: random.Random,
    case: _Case,
    history: list[tuple[str, str]],
    allergy: str,
    plan_tests: tuple[str, ...],
    follow_up: int,
) -> str:
    c = case.condition
    who = rng.choice(_PHRASES["note_subjects"])
    past = f" with a history of {_join([h[0] for h in history])}" if history else ""
    hpi = rng.choice(
        (
            f"{who} is {case.a_age} {case.noun}{past} presenting with {case.duration} of "
            f"{_join(case.symptoms)}.",
            f"{_cap(case.a_age)} {case.noun}{past} reports {_join(case.symptoms)} for "
            f"{case.duration}.",
            f"{case.duration.capitalize()} of {_join(case.symptoms)} in {case.a_age} "
            f"{case.noun}{past}.",
        )
    )
    hpi += " " + rng.choice(_PHRASES["note_asides"])
    meds = "; ".join(h[1] for h in history) if history else "none"
    assessment = rng.choice(_PHRASES["note_assessments"])
    headings = _PHRASES["note_headings"]
    lines = [f"{rng.choice(_NOTE_KINDS)}:"]
    if rng.random() < 0.65:
        lines += _identifier_lines(rng, case)
    lines += [
        f"{rng.choice(headings['history'])}: {hpi}",
        f"Vitals: {_vitals_line(case.vitals)}.",
        f"{rng.choice(headings['findings'])}: {'; '.join(case.findings)}.",
        f"{rng.choice(headings['medications'])}: {meds}.",
        f"Allergies: {allergy}.",
        f"Assessment: {assessment} {c.name}.",
        f"Plan: {_join(plan_tests)}; {c.management}. Follow-up in {follow_up} days.",
    ]
    if len(" ".join(lines).split()) < _MIN_NOTE_WORDS:
        social = _SOCIAL[-1] if case.age < 18 else rng.choice(_SOCIAL[:-1])
        lines.insert(-3, social)
    return "\n".join(lines)


def _count_sentences(text: str) -> int:
    """Sentences end with ``.``, ``!`` or ``?`` followed by a space or the end of the text."""
    return sum(
        1
        for i, ch in enumerate(text)
        if ch in _SENTENCE_END and (i + 1 == len(text) or text[i + 1].isspace())
    )


def _summary(
    rng: random.Random,
    case: _Case,
    history: list[tuple[str, str]],
    allergy: str,
    plan_tests: tuple[str, ...],
) -> str:
    c = case.condition
    past = f" with a history of {_join([h[0] for h in history])}" if history else ""
    opening = rng.choice(
        (
            f"{_cap(case.a_age)} {case.noun}{past} presenting with {case.duration} of "
            f"{_join(case.symptoms)}.",
            f"{_cap(case.a_age)} {case.noun}{past} seen for {_join(case.symptoms)} over "
            f"{case.duration}.",
        )
    )
    abnormal = _abnormal_vitals(case.vitals, case.age)
    finding = _join(case.findings)
    if abnormal:
        exam = rng.choice(
            (
                f"Vitals notable for {_join(abnormal)}; findings included {finding}.",
                f"Work-up found {finding}, with {_join(abnormal)}.",
            )
        )
    else:
        exam = rng.choice(
            (
                f"Vitals were within normal limits and findings included {finding}.",
                f"Work-up found {finding}; vitals were unremarkable.",
            )
        )
    plan = rng.choice(
        (
            f"Assessment is {c.name}; plan includes {_join(plan_tests)} and {c.management}.",
            f"The working diagnosis is {c.name}, managed with {c.management} after "
            f"{_join(plan_tests)}.",
            f"Findings are most consistent with {c.name}. Plan: {_join(plan_tests)}, then "
            f"{c.management}.",
        )
    )
    sentences = [opening, exam, plan]
    if rng.random() < 0.3 and _count_sentences(plan) == 1:
        meds = f"Takes {_join([h[1] for h in history])}" if history else "No regular medications"
        allergic = allergy if allergy.startswith("no ") else f"allergic to {allergy}"
        sentences.append(f"{meds}; {allergic}.")
    return " ".join(sentences)


_SUMMARY_ASKS: tuple[str, ...] = _PHRASES["summary_asks"]


def _summarization(rng: random.Random, people: list[_Patient], index: int) -> dict[str, Any]:
    case = _sample_case(rng, people, CONDITIONS[index % len(CONDITIONS)])
    history = _history(rng, case)
    allergy = rng.choice(_ALLERGIES)
    plan_tests = tuple(rng.sample(case.condition.tests[:3], min(2, len(case.condition.tests))))
    note = _note(rng, case, history, allergy, plan_tests, rng.choice((2, 3, 5, 7, 14)))
    summary = _summary(rng, case, history, allergy, plan_tests)
    ask = rng.choice(_SUMMARY_ASKS)
    user = f"{ask}\n\n{note}" if rng.random() < 0.7 else f"{note}\n\n{ask}"
    messages = _messages(rng, "summarization", [("user", user), ("assistant", summary)])
    return _record("summarization", case, messages, note=note, summary=summary)


# ---------------------------------------------------------------- task 2: diagnosis Q&A

_CONFIRM: tuple[str, ...] = _PHRASES["confirm"]


def _presentation(rng: random.Random, case: _Case) -> str:
    opening = rng.choice(
        (
            f"{_cap(case.a_age)} {case.noun} presents with {_join(case.symptoms)} for "
            f"{case.duration}.",
            f"{_cap(case.a_age)} {case.noun} reports {case.duration} of {_join(case.symptoms)}.",
            f"I am seeing {case.a_age} {case.noun} with {_join(case.symptoms)} over the past "
            f"{case.duration}.",
        )
    )
    exam = rng.choice(_PHRASES["presentation_exam"])
    text = f"{opening} {exam} {_join(case.findings)}."
    if rng.random() < 0.7:
        text += f" Vitals: {_vitals_line(case.vitals)}."
    return text


def _diagnosis_qa(rng: random.Random, people: list[_Patient], index: int) -> dict[str, Any]:
    c = CONDITIONS[index % len(CONDITIONS)]
    case = _sample_case(rng, people, c)
    kind = ("diagnosis", "differential", "next_step")[(index // len(CONDITIONS)) % 3]
    tests = _join(c.tests[:3])
    name = _cap(c.name)
    if kind == "diagnosis":
        ask = rng.choice(_PHRASES["diagnosis_asks"][kind])
        answer = rng.choice(
            (
                f"Most likely diagnosis: {c.name}. Supporting features: {case.features}. "
                f"First tests: {tests}. Initial management: {c.management}.",
                f"{name} is the most likely diagnosis, given {case.features}. Start with {tests}, "
                f"then {c.management}.",
            )
        )
    elif kind == "differential":
        ask = rng.choice(_PHRASES["diagnosis_asks"][kind])
        answer = rng.choice(
            (
                f"Leading diagnosis: {c.name}, because of {case.features}. Also consider "
                f"{_join(c.differentials)}. Useful first tests: {tests}.",
                f"The picture fits {c.name} best (classically {c.clue}). The differential includes "
                f"{_join(c.differentials)}; {tests} help to separate them.",
            )
        )
    else:
        ask = rng.choice(_PHRASES["diagnosis_asks"][kind])
        answer = rng.choice(
            (
                f"This suggests {c.name}. Next steps: {tests}. If confirmed, {c.management}.",
                f"Suspect {c.name} given {case.features}. Work-up: {tests}. First-line management: "
                f"{c.management}.",
            )
        )
    question = f"{_presentation(rng, case)} {ask}"
    answer = f"{answer}\n{rng.choice(_CONFIRM)}"
    messages = _messages(rng, "diagnosis_qa", [("user", question), ("assistant", answer)])
    return _record(
        "diagnosis_qa", case, messages, question=question, answer=answer, condition=c.name
    )


# ---------------------------------------------------------------- task 3: patient education

_ASK: dict[str, tuple[str, ...]] = _PHRASES["ask"]
_OPENERS: tuple[str, ...] = _PHRASES["openers"]
_CLOSERS: tuple[str, ...] = _PHRASES["closers"]


def _education(rng: random.Random, people: list[_Patient], index: int) -> dict[str, Any]:
    c = CONDITIONS[index % len(CONDITIONS)]
    case = _sample_case(rng, people, c, min_age=16)
    answers = {
        "what": c.about,
        "child": c.about,
        "treat": c.self_care,
        "flags": c.red_flags,
        "med_what": c.drug_use,
        "med_side": c.drug_side,
    }
    if rng.random() < 0.35:
        plan = ["med_what", "med_side"] + (["flags"] if rng.random() < 0.5 else [])
    else:
        first = "child" if case.age < 16 else "what"
        plan = rng.choice(([first, "treat", "flags"], [first, "flags"], [first, "treat"]))
    turns = []
    for kind in plan:
        ask = rng.choice(_ASK[kind]).format(lay=c.lay, drug=c.drug)
        turns.append(("user", _cap(ask)))
        turns.append(("assistant", rng.choice(_OPENERS) + answers[kind] + rng.choice(_CLOSERS)))
    messages = _messages(rng, "patient_education", turns)
    return _record("patient_education", case, messages, condition=c.name)


# ---------------------------------------------------------------- task 4: multiple choice

_LETTERS = ("A", "B", "C", "D")


def _distractors(
    rng: random.Random, correct: str, preferred: list[str], pool: list[str]
) -> list[str]:
    picked = [x for x in preferred if x != correct][:3]
    rest = [x for x in pool if x != correct and x not in picked]
    return picked + rng.sample(rest, 3 - len(picked))


def _multiple_choice(
    rng: random.Random, people: list[_Patient], index: int, letter: str
) -> dict[str, Any]:
    c = CONDITIONS[index % len(CONDITIONS)]
    case = _sample_case(rng, people, c)
    vignette = (
        f"{_cap(case.a_age)} {case.noun} presents with {case.duration} of "
        f"{_join(case.symptoms)}. Findings include {_join(case.findings)}. "
        f"Vitals: {_vitals_line(case.vitals)}."
    )
    testable = not c.tests[0].startswith("clinical")
    if testable and rng.random() < 0.3:
        stem = rng.choice(_PHRASES["choice_stems"]["test"])
        correct = c.tests[0]
        pool = [
            o.tests[0]
            for o in CONDITIONS
            if not o.tests[0].startswith("clinical") and o.tests[0] not in c.tests
        ]
        wrong = _distractors(rng, correct, [], sorted(set(pool)))
        explanation = (
            f"The picture of {case.features} suggests {c.name}, and {correct} is "
            "the key first test."
        )
    else:
        stem = rng.choice(_PHRASES["choice_stems"]["diagnosis"])
        correct = c.name
        in_table = [d for d in c.differentials if d in _BY_NAME]
        wrong = _distractors(
            rng, correct, rng.sample(in_table, len(in_table)), [o.name for o in CONDITIONS]
        )
        explanation = f"The picture of {case.features} points to {c.name} rather than {wrong[0]}."
    rng.shuffle(wrong)
    texts = wrong[:]
    texts.insert(_LETTERS.index(letter), correct)
    options = {key: _cap(text) for key, text in zip(_LETTERS, texts, strict=True)}
    question = f"{vignette} {stem}"
    shown = "\n".join(f"{key}. {text}" for key, text in options.items())
    reply = f"{letter}. {options[letter]}\n{explanation}"
    messages = _messages(
        rng, "multiple_choice", [("user", f"{question}\n{shown}"), ("assistant", reply)]
    )
    return _record(
        "multiple_choice",
        case,
        messages,
        question=question,
        options=options,
        answer=letter,
        answer_text=options[letter],
        condition=c.name,
    )


def _letters(rng: random.Random, count: int) -> list[str]:
    """Answer letters, balanced: each block of four is a shuffled A-D."""
    letters: list[str] = []
    while len(letters) < count:
        block = list(_LETTERS)
        rng.shuffle(block)
        letters += block
    return letters[:count]


# ---------------------------------------------------------------- public API

_Builder = Callable[[random.Random, list[_Patient], int], dict[str, Any]]


def generate_records(seed: int = 0, n_per_task: int | None = None) -> list[dict[str, Any]]:
    """Generate the synthetic, fictional clinical dataset.

    Each task draws from its own ``random.Random`` seeded from ``seed`` and the task name, so the
    output is identical on every platform and Python build for the same arguments.

    Args:
        seed: Seed of every random choice.
        n_per_task: Records per task; ``None`` uses the shipped counts in `TASK_COUNTS`.

    Returns:
        Records in file order, each with ``id``, ``task``, ``patient_id``, ``messages`` and the
        task's extra fields, keys in that order.
    """
    people = _patients(seed)
    builders: dict[str, _Builder] = {
        "summarization": _summarization,
        "diagnosis_qa": _diagnosis_qa,
        "patient_education": _education,
    }
    records: list[dict[str, Any]] = []
    for task, default_count in TASK_COUNTS.items():
        count = default_count if n_per_task is None else n_per_task
        rng = random.Random(f"{seed}-{task}")
        if task == "multiple_choice":
            letters = _letters(rng, count)
            records += [_multiple_choice(rng, people, i, letters[i]) for i in range(count)]
        else:
            records += [builders[task](rng, people, i) for i in range(count)]
    return [{"id": f"syn-{n:05d}", **record} for n, record in enumerate(records, start=1)]


def write_default(path: Path) -> None:
    """Write ``generate_records()`` to ``path`` as UTF-8 JSON Lines, atomically.

    Args:
        path: Destination file; its parent directory is created if needed.
    """
    with atomic_file(path) as handle:
        for record in generate_records():
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    path.chmod(0o644)  # package data: readable by all, unlike the private temp file


if __name__ == "__main__":
    write_default(DEFAULT_PATH)
    print(f"wrote {DEFAULT_PATH}")
