"""Multiple-choice and generation items from the public layouts and the embedded records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medlora import ClinicalDataset, DatasetError
from medlora.eval import choice_items, generation_items, pubmedqa_records

MEDQA = {
    "question": "Which drug is first-line for type 2 diabetes?",
    "options": {
        "A": "Insulin",
        "B": "Metformin",
        "C": "Sulfonylurea",
        "D": "Acarbose",
        "E": "Diet",
    },
    "answer": "Metformin",
    "answer_idx": "B",
}
MEDMCQA = {
    "question": "Vitamin deficient in scurvy?",
    "opa": "A",
    "opb": "B12",
    "opc": "C",
    "opd": "D",
    "cop": 2,
}
PUBMEDQA = {
    "QUESTION": "Does exercise lower HbA1c?",
    "CONTEXTS": ["Adults walked daily.", "HbA1c fell by 0.5%."],
    "final_decision": "yes",
}


def test_medqa_medmcqa_and_pubmedqa_layouts() -> None:
    medqa, medmcqa, pubmedqa = choice_items([MEDQA, MEDMCQA, PUBMEDQA])
    assert medqa.answer == 1 and len(medqa.options) == 5
    assert medqa.plain_prompt().startswith("Question: Which drug")
    assert medqa.plain_prompt().endswith("E. Diet\nAnswer:")
    assert medqa.continuations("plain")[1] == " Metformin"  # lm-eval: " " + choice
    assert medqa.continuations("chat")[1] == "B. Metformin"  # the trained reply form
    assert medmcqa.options[2] == ("C", "C") and medmcqa.answer == 2
    assert pubmedqa.task == "pubmedqa" and pubmedqa.answer == 0
    assert pubmedqa.plain_prompt() == (
        "Abstract: Adults walked daily. HbA1c fell by 0.5%.\n"
        "Question: Does exercise lower HbA1c?\nAnswer:"
    )
    assert pubmedqa.continuations("plain") == [" yes", " no", " maybe"]


def test_a_wrong_answer_letter_names_the_record() -> None:
    with pytest.raises(DatasetError) as info:
        choice_items([MEDQA, {**MEDQA, "answer_idx": "Z"}])
    assert info.value.record_index == 1 and info.value.field == "answer"


def test_pubmedqa_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps({"12345": PUBMEDQA}))
    (item,) = choice_items(pubmedqa_records(path))
    assert item.id == "12345" and item.options[item.answer][1] == "yes"


def test_embedded_records_give_mc_and_generation_items() -> None:
    dataset = ClinicalDataset.default()
    items = choice_items(dataset.records)
    assert len(items) == 96
    first = items[0]
    assert first.messages and first.messages[-1]["role"] == "user"
    assert first.continuations("chat")[first.answer] == (
        f"{first.options[first.answer][0]}. {first.options[first.answer][1]}"
    )
    gen = generation_items(dataset.records)
    assert len(gen) == 96 + 84  # diagnosis_qa + summarization
    assert all(item.messages[-1]["role"] == "user" for item in gen)
