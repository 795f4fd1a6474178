"""Multiple choice scored under rotations of its options: a letter preference stops deciding
the answer (``EvalConfig.option_orders``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from medlora import ClinicalDataset, DatasetError
from medlora.eval import EvalConfig, evaluate_model
from medlora.eval._tasks import ChoiceItem, choice_items

QUESTIONS = [
    {
        "id": f"q{i}",
        "question": f"Which drug treats condition {i}?",
        "options": {"A": f"wrong {i}a", "B": f"wrong {i}b", "C": f"right {i}", "D": f"wrong {i}d"}
        if i % 2
        else {"A": f"right {i}", "B": f"wrong {i}b", "C": f"wrong {i}c", "D": f"wrong {i}d"},
        "answer": "C" if i % 2 else "A",
    }
    for i in range(6)
]


def test_rotation_moves_the_texts_under_fixed_letters_in_the_prompt_too() -> None:
    item = choice_items(ClinicalDataset.from_records(QUESTIONS).records)[1]
    moved = item.rotated(1)
    assert [k for k, _ in moved.options] == ["A", "B", "C", "D"]
    assert [t for _, t in moved.options] == ["wrong 1d", "wrong 1a", "wrong 1b", "right 1"]
    assert moved.options[moved.answer][1] == "right 1"
    prompt = moved.chat_messages()[-1]["content"]
    assert "A. wrong 1d\nB. wrong 1a\nC. wrong 1b\nD. right 1" in prompt
    assert prompt.startswith("Which drug treats condition 1?\n")
    assert item.rotated(4) == item and item.rotated(0) == item
    assert item.rotated(5) == moved


def test_every_embedded_question_can_be_rotated() -> None:
    items = choice_items(ClinicalDataset.default().records)
    assert items
    for item in items:
        for shift in range(1, len(item.options)):
            view = item.rotated(shift)
            shown = "\n".join(f"{k}. {v}" for k, v in view.options)
            assert shown in view.chat_messages()[-1]["content"]
            assert view.options[view.answer][1] == item.options[item.answer][1]


def test_a_prompt_without_the_option_lines_cannot_be_rotated() -> None:
    item = ChoiceItem(
        id="odd",
        question="Q?",
        options=(("A", "x"), ("B", "y")),
        answer=0,
        task="multiple_choice",
        messages=({"role": "user", "content": "Q? Options: x or y"},),
    )
    with pytest.raises(DatasetError, match=r"record 'odd'.*option_orders=1"):
        item.rotated(1)


class LetterLover:
    """Prefers whatever sits under letter A by 5 nats; knows the right text by 1 nat."""

    eos_token = "</s>"

    def render(self, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
        return "\n".join(m["content"] for m in messages)

    def loglikelihood(self, context: str, continuation: str) -> Any:
        score = -10.0 + 5.0 * continuation.startswith("A. ") + continuation[3:].startswith("right")
        return type("Scored", (), {"logprob": score, "n_tokens": 1})()


def test_rotations_cancel_a_letter_preference() -> None:
    dataset = ClinicalDataset.from_records(QUESTIONS)
    as_given = evaluate_model(LetterLover(), dataset, EvalConfig(tasks="multiple_choice"))  # type: ignore[arg-type]
    rotated = evaluate_model(
        LetterLover(),  # type: ignore[arg-type]
        dataset,
        EvalConfig(tasks="multiple_choice", option_orders=4),
    )
    assert as_given["mc_acc"] == pytest.approx(0.5)  # always A: right when A is the answer
    assert "mc_acc_circular" not in as_given and "mc_acc_as_given" not in as_given
    assert rotated["mc_acc"] == 1.0 and rotated["mc_acc_norm"] == 1.0
    assert rotated["mc_acc_circular"] == 0.0  # each single order still picks A
    assert rotated["mc_acc_as_given"] == as_given["mc_acc"]
    assert rotated["mc_n"] == 6


def test_option_orders_is_validated() -> None:
    from medlora import ConfigError

    with pytest.raises(ConfigError, match="option_orders"):
        EvalConfig(option_orders=0)
