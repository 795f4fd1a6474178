"""Scoring functions against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from medlora.eval import choose, exact_match, lcs_length, normalize_answer, perplexity, rouge_l


def test_rouge_l_matches_hand_computed_lcs() -> None:
    # LCS of [the cat sat on the mat] and [the cat is on the mat] is "the cat on the mat": 5.
    score = rouge_l("The cat sat on the mat.", "the cat is on the mat")
    assert score.precision == pytest.approx(5 / 6)
    assert score.recall == pytest.approx(5 / 6)
    assert score.f1 == pytest.approx(5 / 6)
    # Lin (2004)'s example: LCS "the gunman" = 2; P = 2/4, R = 2/6, F = 0.4.
    score = rouge_l("police killed the gunman", "the gunman was killed by police")
    assert (score.precision, score.recall) == pytest.approx((0.5, 1 / 3))
    assert score.f1 == pytest.approx(0.4)
    assert rouge_l("", "anything").f1 == 0.0
    assert rouge_l("identical words here", "Identical, words here!").f1 == 1.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS's example


def test_exact_match_normalises_case_punctuation_and_articles() -> None:
    assert normalize_answer("The  Chest X-ray.") == "chest xray"
    assert exact_match("The chest X-ray.", "chest X-ray") == 1.0
    assert exact_match("chest CT", "chest X-ray") == 0.0


def test_acc_and_acc_norm_pick_by_total_and_per_character_loglikelihood() -> None:
    # raw: -4 > -6 picks 0; per character: -4/3 = -1.33 < -6/10 = -0.6 picks 1.
    assert choose([-4.0, -6.0], [" no", " maybe yes"]) == (0, 1)
    assert choose([-2.0, -2.0], [" a", " b"]) == (0, 0)  # ties go to the first
    with pytest.raises(ValueError):
        choose([-1.0], [" a", " b"])


def test_perplexity_on_toy_logits() -> None:
    uniform = torch.zeros(3, 2)  # every next token has p = 1/2
    assert perplexity(uniform, torch.tensor([-100, 0, 1])) == (pytest.approx(2.0), 2)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]])
    # position 0 predicts label[1] = 0 with p = 3/4; the rest is ignored: ppl = 4/3.
    assert perplexity(logits, torch.tensor([-100, 0, -100])) == (pytest.approx(4 / 3), 1)
    ppl, n = perplexity(uniform, torch.tensor([-100, -100, -100]))
    assert math.isnan(ppl) and n == 0
