"""Batched multiple-choice scoring gives the scores of one forward per option."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlora import ClinicalDataset, load
from medlora.eval._scoring import score_requests
from medlora.eval._tasks import choice_items


def test_batched_scores_equal_one_forward_per_option(random_model_dir: Path) -> None:
    items = choice_items(ClinicalDataset.default().records)[:5]
    with load(random_model_dir) as model:
        requests = [
            (model.render(item.chat_messages(), generation_prompt=True), item.continuations("chat"))
            for item in items
        ]
        requests.append(("Question: Is it?\nAnswer:", [" yes", " no", "maybe so", "s"]))
        batched = score_requests(model, requests, batch_size=4)
        single = [[model.loglikelihood(c, o).logprob for o in opts] for c, opts in requests]
    assert [len(s) for s in batched] == [len(s) for s in single]
    for got, want in zip(batched, single, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_models_without_a_torch_module_score_one_question_at_a_time() -> None:
    class Scorer:
        def loglikelihood(self, context: str, continuation: str) -> object:
            return type("L", (), {"logprob": -float(len(continuation))})()

    assert score_requests(Scorer(), [("q", ["a", "bbb"])]) == [[-1.0, -3.0]]
