"""Multiple-choice scoring speed: one forward per option vs batched questions, same scores.

Scores the chat-rendered multiple-choice questions of the embedded synthetic records (each
with its options) three ways with the same model and checks that they agree:

* ``per_option``: one forward pass per option (``loglikelihood``), how eval scored before;
* ``per_question``: the context once, its KV cache shared by the options (``loglikelihoods``);
* ``batched``: all options of ``--batch-size`` questions in one padded forward
  (``medlora.eval`` scoring, what ``medlora eval`` runs).

    python benchmarks/mc_scoring.py                  # the tiny model, 96 questions
    python benchmarks/mc_scoring.py --model DIR      # any local model directory
    python benchmarks/mc_scoring.py --smoke          # 8 questions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def run(model_dir: Path, questions: int, batch_size: int) -> dict[str, Any]:
    import torch

    from medlora import ClinicalDataset, load
    from medlora.eval import choice_items, score_requests

    torch.manual_seed(0)
    items = choice_items(ClinicalDataset.default().records)[:questions]
    with load(model_dir) as model:
        requests = [
            (model.render(i.chat_messages(), generation_prompt=True), i.continuations("chat"))
            for i in items
        ]
        score_requests(model, requests[:1], batch_size=1)  # warm-up
        per_option, t_option = _timed(
            lambda: [[model.loglikelihood(c, o).logprob for o in opts] for c, opts in requests]
        )
        per_question, t_question = _timed(
            lambda: [[s.logprob for s in model.loglikelihoods(c, opts)] for c, opts in requests]
        )
        batched, t_batched = _timed(lambda: score_requests(model, requests, batch_size=batch_size))
    flat = [
        (a, b, c)
        for x, y, z in zip(per_option, per_question, batched, strict=True)
        for a, b, c in zip(x, y, z, strict=True)
    ]
    return {
        "model": str(model_dir),
        "questions": len(requests),
        "options": len(flat),
        "batch_size": batch_size,
        "seconds": {"per_option": t_option, "per_question": t_question, "batched": t_batched},
        "speedup_vs_per_option": t_option / t_batched,
        "speedup_vs_per_question": t_question / t_batched,
        "max_abs_diff_batched": max(abs(a - c) for a, _, c in flat),
        "max_abs_diff_per_question": max(abs(a - b) for a, b, _ in flat),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="local model directory (default: tiny)")
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="8 questions")
    args = parser.parse_args(argv)
    questions = 8 if args.smoke else args.questions
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from medlora.testing import make_tiny_llama

            model_dir = make_tiny_llama(Path(tmp) / "tiny", seed=0, pretrain_steps=0)
        report = run(model_dir, questions, args.batch_size)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
