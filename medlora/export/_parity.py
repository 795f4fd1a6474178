"""Parity measurements: does an exported artefact behave like the model that was trained?"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

PROBE_QUESTIONS = (
    "A 58-year-old man has crushing chest pain for 40 minutes. What is the first step?",
    "What are common side effects of metformin?",
    "Summarize: 72-year-old woman, 3 days of fever and productive cough, SpO2 91%.",
    "How should I take my inhaler during an asthma attack?",
    "What is the most likely diagnosis for burning urination and frequency in a young woman?",
    "List red-flag symptoms of headache that need urgent imaging.",
    "Which test confirms iron-deficiency anemia?",
    "Explain hypothyroidism in plain language.",
    "What is first-line treatment for uncomplicated hypertension?",
    "A child has wheeze and cough at night. What could it be?",
    "When should a patient with a leg swelling seek urgent care?",
    "Summarize: 45-year-old man, epigastric burning after meals, relieved by antacids.",
    "What does an HbA1c of 8.2% mean?",
    "Give two causes of acute abdominal pain in the right lower quadrant.",
    "How is community-acquired pneumonia treated in a healthy adult?",
    "What lifestyle advice helps with gastro-oesophageal reflux?",
    "Which vaccines are recommended for adults over 65?",
    "What should I do if I miss a dose of my blood thinner?",
    "Describe the symptoms of a migraine with aura.",
    "What is the difference between type 1 and type 2 diabetes?",
    "A 30-year-old has palpitations and weight loss. Which test comes first?",
    "What are warning signs of sepsis?",
    "How long does a urinary tract infection take to improve on antibiotics?",
    "What is the normal range of resting heart rate in adults?",
)
"""Short clinical questions (written for medlora) used as parity probes."""

SYSTEM = "You are a careful clinical assistant."


def probe_conversations(n: int = 24) -> list[list[dict[str, str]]]:
    """``n`` single-turn probe conversations (system + user)."""
    questions = [PROBE_QUESTIONS[i % len(PROBE_QUESTIONS)] for i in range(n)]
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions
    ]


def probe_ids(tokenizer: Any, n: int = 24) -> list[list[int]]:
    """Token ids of each probe rendered with the chat template and a generation prompt."""
    from medlora.data import render

    return [
        list(tokenizer(render(tokenizer, c, generation_prompt=True))["input_ids"])
        for c in probe_conversations(n)
    ]


def hf_logits(model: Any, ids: Sequence[Sequence[int]]) -> list[Any]:
    """Float32 logits (seq, vocab) of ``model`` for each id sequence, one at a time."""
    import torch

    device = next(p for p in model.parameters()).device
    out = []
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([list(seq)], device=device)
            out.append(model(input_ids=x).logits[0].float().cpu())
    return out


def llama_cpp_logits(path: Path, ids: Sequence[Sequence[int]]) -> list[Any]:
    """Float32 logits (seq, vocab) from llama.cpp for each id sequence."""
    import numpy as np
    import torch

    from medlora.export._llama_cpp import open_gguf

    longest = max(len(s) for s in ids)
    llm = open_gguf(path, n_ctx=max(64, longest + 8), logits_all=True)
    out = []
    try:
        for seq in ids:
            llm.reset()
            llm.eval(list(seq))
            scores = np.array(llm.scores[: len(seq)], dtype=np.float32)
            out.append(torch.from_numpy(scores))
    finally:
        llm.close()
    return out


@attrs.frozen(kw_only=True)
class Agreement:
    """How closely one model's next-token distributions follow a reference's."""

    top1: float
    """Share of positions where both pick the same most likely token."""
    top1_last: float
    """Share of probes whose last position (the first generated token) agrees."""
    max_abs_logit_diff: float
    """Largest absolute logit difference at any position."""
    mean_kl: float
    """Mean KL(reference || candidate) per position, in nats."""
    positions: int
    """Positions compared."""

    def to_dict(self) -> dict[str, float]:
        """Plain mapping for JSON."""
        return attrs.asdict(self)


def compare(reference: Sequence[Any], candidate: Sequence[Any]) -> Agreement:
    """Compare two lists of (seq, vocab) logits position by position."""
    import torch

    same = last = total = 0
    max_diff, kl_sum = 0.0, 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        vocab = min(ref.shape[-1], cand.shape[-1])
        ref, cand = ref[:, :vocab].double(), cand[:, :vocab].double()
        same += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        last += int(ref[-1].argmax() == cand[-1].argmax())
        total += ref.shape[0]
        max_diff = max(max_diff, float((ref - cand).abs().max()))
        p = torch.log_softmax(ref, -1)
        q = torch.log_softmax(cand, -1)
        kl_sum += float((p.exp() * (p - q)).sum())
    return Agreement(
        top1=same / total,
        top1_last=last / len(reference),
        max_abs_logit_diff=max_diff,
        mean_kl=kl_sum / total,
        positions=total,
    )


def tokenization_report(path: Path, tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    """Compare llama.cpp's tokenization of ``texts`` (``special=True``, as its chat path does)
    with the HF tokenizer's, both ways, naming where they part.

    Known case (measured on the Zephyr template): llama.cpp's SentencePiece path prepends
    ``'▁'`` to every text fragment that follows a special token, so ``</s>\n<|user|>`` gains
    one ``'▁'`` after each ``</s>``; transformers 5 does the same only with ``legacy=True``,
    which is how medlora loads and writes tokenizers (``medlora._hub.load_tokenizer``).

    Returns:
        ``matching``/``total`` texts, token counts on each side, and up to 8 ``differences``
        (probe, first differing position, HF token, llama.cpp token).
    """
    from medlora.export._llama_cpp import open_gguf

    llm = open_gguf(path, n_ctx=64, vocab_only=True)
    try:
        ours = [list(tokenizer(t)["input_ids"]) for t in texts]
        theirs = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]
    finally:
        llm.close()
    differences = []
    for probe, (hf, lc) in enumerate(zip(ours, theirs, strict=True)):
        if hf == lc:
            continue
        pairs = enumerate(zip(hf, lc, strict=False))
        pos = next((i for i, (a, b) in pairs if a != b), min(len(hf), len(lc)))
        differences.append(
            {
                "probe": probe,
                "position": pos,
                "hf": tokenizer.convert_ids_to_tokens(hf[pos]) if pos < len(hf) else None,
                "llama_cpp": tokenizer.convert_ids_to_tokens(lc[pos]) if pos < len(lc) else None,
                "after": tokenizer.convert_ids_to_tokens(hf[pos - 1]) if pos else None,
            }
        )
    return {
        "matching": len(texts) - len(differences),
        "total": len(texts),
        "hf_tokens": sum(map(len, ours)),
        "llama_cpp_tokens": sum(map(len, theirs)),
        "differences": differences[:8],
    }


def generation_stops(path: Path, n: int = 3, max_tokens: int = 96) -> dict[str, Any]:
    """Greedy chats through llama.cpp's own chat path (the template embedded in the file):
    how many end with ``finish_reason == "stop"`` (EOS) rather than running to ``max_tokens``."""
    from medlora.export._llama_cpp import open_gguf

    llm = open_gguf(path, n_ctx=512)
    reasons, lengths = [], []
    try:
        for conversation in probe_conversations(n):
            reply = llm.create_chat_completion(
                messages=conversation, max_tokens=max_tokens, temperature=0.0
            )
            reasons.append(reply["choices"][0]["finish_reason"])
            lengths.append(reply["usage"]["completion_tokens"])
    finally:
        llm.close()
    return {"stopped": reasons.count("stop"), "total": n, "completion_tokens": lengths}


def chat_template_problems(path: Path, tokenizer: Any) -> list[str]:
    """Structural checks that llama.cpp will format and stop like training did."""
    gguf = __import__("gguf")
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        item = reader.fields.get(key)
        return None if item is None else item.contents()

    problems = []
    template = field("tokenizer.chat_template")
    if template is None:
        problems.append("no tokenizer.chat_template (llama.cpp would fall back to llama-2)")
    elif template != tokenizer.chat_template:
        problems.append("tokenizer.chat_template differs from the training tokenizer's")
    if field("tokenizer.ggml.eos_token_id") != tokenizer.eos_token_id:
        problems.append(
            f"tokenizer.ggml.eos_token_id {field('tokenizer.ggml.eos_token_id')} != "
            f"{tokenizer.eos_token_id}"
        )
    if field("tokenizer.ggml.bos_token_id") != tokenizer.bos_token_id:
        problems.append("tokenizer.ggml.bos_token_id differs from the training tokenizer's")
    return problems
