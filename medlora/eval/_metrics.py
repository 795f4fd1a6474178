"""Scoring functions: perplexity, multiple-choice accuracy, ROUGE-L and exact match.

ROUGE-L is implemented here (a longest-common-subsequence over lower-cased alphanumeric
tokens, as the ``rouge-score`` package tokenizes without stemming) rather than pulled in as a
dependency: it is twenty lines, needs no nltk/absl, and cannot reach the network.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Any

import attrs

_TOKEN = re.compile(r"[a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (``rouge-score``'s tokenizer, no stemming)."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


@attrs.frozen(kw_only=True)
class RougeL:
    """ROUGE-L of one prediction against one reference."""

    precision: float
    """LCS / prediction tokens."""
    recall: float
    """LCS / reference tokens."""
    f1: float
    """Harmonic mean of precision and recall."""


def rouge_l(prediction: str, reference: str) -> RougeL:
    """ROUGE-L (LCS-based precision, recall and F1) of ``prediction`` against ``reference``."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return RougeL(precision=0.0, recall=0.0, f1=0.0)
    p, r = lcs / len(pred), lcs / len(ref)
    return RougeL(precision=p, recall=r, f1=2 * p * r / (p + r))


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both normalise to the same string, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def perplexity(logits: Any, labels: Any, *, ignore_index: int = -100) -> tuple[float, int]:
    """Perplexity of the labelled tokens under next-token ``logits``.

    Args:
        logits: ``(seq, vocab)`` scores; position ``i`` predicts token ``i + 1``.
        labels: ``(seq,)`` token ids, ``ignore_index`` where no loss is taken.
        ignore_index: Label value to skip.

    Returns:
        ``(perplexity, tokens scored)``; ``(nan, 0)`` when nothing is labelled.
    """
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float64)[:-1]  # (seq - 1, vocab)
    target = torch.as_tensor(labels)[1:]
    keep = target != ignore_index
    count = int(keep.sum())
    if count == 0:
        return math.nan, 0
    logp = torch.log_softmax(logits[keep], -1)
    nll = -logp.gather(1, target[keep].unsqueeze(1)).sum()
    return math.exp(float(nll) / count), count


def choose(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(argmax by log-likelihood, argmax by log-likelihood per character)``.

    lm-eval's ``acc`` and ``acc_norm``: the second divides each choice's log-likelihood by the
    character length of the scored continuation. Ties go to the first choice.
    """
    if len(logprobs) != len(choices) or not choices:
        raise ValueError("need one log-likelihood per choice, and at least one choice")
    raw = max(range(len(choices)), key=lambda i: logprobs[i])
    norm = max(range(len(choices)), key=lambda i: logprobs[i] / max(1, len(choices[i])))
    return raw, norm
