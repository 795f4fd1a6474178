"""Multiple-choice scoring in batches: one padded forward for every option of several
questions, with exactly the scores of one forward per option.

Each option is scored the way ``loglikelihood`` scores it (lm-eval's convention): the context
and the context + option are tokenized, the option is the tail by which the second is longer.
The rows of a batch are right-padded with an attention mask, so causal attention keeps the
padding out of every real position and the log-probabilities match the unbatched ones.
Models without a transformers module (GGUF) score one question at a time through their own
``loglikelihoods``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Request = tuple[str, Sequence[str]]
"""A context and the continuations scored after it (one question and its options)."""


def score_requests(
    model: Any, requests: Sequence[Request], *, batch_size: int = 8
) -> list[list[float]]:
    """Summed log-probability (nats) of each continuation after its context.

    Args:
        model: A loaded model (:func:`medlora.load`); a Hugging Face one is batched.
        requests: ``(context, continuations)`` per question.
        batch_size: Questions per forward pass (all their options together).
    """
    if not (hasattr(model, "model") and hasattr(model, "tokenizer")):
        return [_one_question(model, context, options) for context, options in requests]
    out: list[list[float]] = []
    for at in range(0, len(requests), batch_size):
        out += _batch(model, requests[at : at + batch_size])
    return out


def _one_question(model: Any, context: str, continuations: Sequence[str]) -> list[float]:
    if hasattr(model, "loglikelihoods"):  # one pass over the shared context
        return [s.logprob for s in model.loglikelihoods(context, continuations)]
    return [model.loglikelihood(context, c).logprob for c in continuations]


def _batch(model: Any, requests: Sequence[Request]) -> list[list[float]]:
    import torch

    rows: list[tuple[list[int], int]] = []  # (ids, first scored position)
    for context, continuations in requests:
        n_context = len(model.tokenize(context))
        for continuation in continuations:
            whole = model.tokenize(context + continuation)
            rows.append((whole, len(whole) - max(1, len(whole) - n_context)))
    width = max(len(ids) for ids, _ in rows)
    pad = model.tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    device = next(model.model.parameters()).device
    with torch.no_grad():
        logits = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    scores = []
    for row, (tokens, start) in enumerate(rows):
        lp = torch.log_softmax(logits[row, start - 1 : len(tokens) - 1].float(), -1)  # (n, vocab)
        target = torch.tensor(tokens[start:], device=lp.device)
        scores.append(float(lp.gather(1, target[:, None]).sum()))
    out, at = [], 0
    for _, continuations in requests:
        out.append(scores[at : at + len(continuations)])
        at += len(continuations)
    return out
