"""A short, seeded full-parameter pre-training pass so a tiny model knows some language.

A randomly initialised model's logits are nearly flat and LoRA on a frozen random base can
barely move them, so fine-tuning results on it say little. A few dozen steps of plain causal
language modelling on the embedded corpus give the tiny base a real (if small) vocabulary
knowledge, the way TinyLlama's pre-training does at scale. No chat template is used here: the
chat format is what fine-tuning teaches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def pretrain(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steps: int,
    seed: int = 0,
    seq_len: int = 256,
    batch_size: int = 8,
    learning_rate: float = 3e-3,
) -> list[float]:
    """Train every weight of ``model`` on packed ``texts`` for ``steps`` steps; returns losses."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=True)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    stream = torch.tensor(ids, dtype=torch.long)
    n_windows = max(1, (len(stream) - 1) // seq_len)
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)  # (windows, seq)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses = []
    for _ in range(steps):
        batch = windows[[rng.randrange(n_windows) for _ in range(batch_size)]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
