"""Each record kind becomes the expected chat messages."""

from __future__ import annotations

from typing import Any

import pytest

from medlora import ClinicalDataset, DatasetError

CASES: list[tuple[dict[str, Any], str, str]] = [
    (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        "chat",
        "Hello",
    ),
    (
        {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        "sharegpt",
        "A.",
    ),
    (
        {"instruction": "Expand.", "input": "SOB", "output": "Shortness of breath."},
        "instruction",
        "Shortness of breath.",
    ),
    ({"question": "Normal SpO2?", "answer": "95-100%."}, "qa", "95-100%."),
    ({"note": "72F with cough.", "summary": "Cough."}, "summarization", "Cough."),
    ({"text": "Raw clinical prose."}, "text", "Raw clinical prose."),
    (
        {
            "question": "Beta blocker?",
            "options": {"A": "Atenolol", "B": "Amlodipine"},
            "answer": "A",
        },
        "multiple_choice",
        "A. Atenolol",
    ),
    (
        {
            "question": "Does X help?",
            "contexts": ["Trial of 40 patients."],
            "long_answer": "It helped.",
            "final_decision": "yes",
        },
        "pubmedqa",
        "It helped.\nAnswer: yes",
    ),
]


@pytest.mark.parametrize(("record", "kind", "reply"), CASES, ids=[c[1] for c in CASES])
def test_each_kind_is_detected_and_converted(record: dict[str, Any], kind: str, reply: str) -> None:
    (got,) = ClinicalDataset.from_records([record])
    assert got.kind == kind
    assert got.messages[-1] == {"role": "assistant", "content": reply}


def test_multiple_choice_answer_as_letter_text_index_and_medqa_layout() -> None:
    options = ["Ferritin", "Troponin", "Lipase"]
    base = {"question": "Iron deficiency test?", "options": options}
    for answer in ("A", "Ferritin", 0):
        (r,) = ClinicalDataset.from_records([{**base, "answer": answer}])
        assert r.messages[-1]["content"] == "A. Ferritin"
    medqa = {
        "question": "Q?",
        "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
        "answer": "z",
        "answer_idx": "C",
    }
    assert ClinicalDataset.from_records([medqa])[0].messages[-1]["content"] == "C. z"


def test_medmcqa_cop_is_one_based_when_asked() -> None:
    row = {"question": "Q?", "opa": "a1", "opb": "b1", "opc": "c1", "opd": "d1", "cop": 2}
    assert ClinicalDataset.from_records([row])[0].messages[-1]["content"] == "C. c1"
    one_based = ClinicalDataset.from_records([row], answer_index_base=1)
    assert one_based[0].messages[-1]["content"] == "B. b1"
    with pytest.raises(DatasetError, match="1-based index"):
        ClinicalDataset.from_records([{**row, "cop": 0}], answer_index_base=1)


def test_pubmedqa_huggingface_layout_and_bad_decision() -> None:
    hf = {
        "pubid": 1,
        "question": "Q?",
        "context": {"contexts": ["Para one.", "Para two."]},
        "long_answer": "",
        "final_decision": "maybe",
    }
    (r,) = ClinicalDataset.from_records([hf])
    assert r.messages[0]["content"].startswith("Abstract: Para one. Para two.")
    assert r.messages[-1]["content"] == "Answer: maybe"
    with pytest.raises(DatasetError) as info:
        ClinicalDataset.from_records([{**hf, "final_decision": "perhaps"}])
    assert info.value.field == "final_decision"


def test_kind_override_and_field_map_and_report() -> None:
    rows = [{"src": "Doctor: hi. Patient: cough.", "tgt": "Cough for 3 days."}]
    ds = ClinicalDataset.from_records(rows, field_map={"src": "note", "tgt": "summary"})
    assert ds.report.kinds == {"summarization": 1}
    forced = ClinicalDataset.from_records(
        [{"question": "Q?", "answer": "A.", "text": "t"}], kind="text"
    )
    assert forced[0].kind == "text"


def test_system_prompt_added_to_every_conversation_but_raw_text() -> None:
    ds = ClinicalDataset.from_records(
        [{"question": "Q?", "answer": "A."}, {"text": "prose"}], system_prompt="Be careful."
    )
    assert ds[0].messages[0] == {"role": "system", "content": "Be careful."}
    assert ds[1].messages[0]["role"] == "assistant"
