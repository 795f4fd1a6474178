"""Parity measurements: does an exported artefact behave like the model that was trained?"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from medlora.export._fidelity import FidelityText

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
    """Token ids of each probe rendered with the served chat template and a generation
    prompt, as training and servers build them."""
    from medlora.data import encode_chat

    return [encode_chat(tokenizer, c, generation_prompt=True) for c in probe_conversations(n)]


def hf_logits(
    model: Any, ids: Sequence[Sequence[int]], rows: Sequence[Sequence[int]] | None = None
) -> list[Any]:
    """Float32 logits (seq, vocab) of ``model`` for each id sequence, one at a time.

    With ``rows``, only those positions of each sequence are kept: (len(rows[i]), vocab).
    """
    import torch

    device = next(p for p in model.parameters()).device
    out = []
    with torch.no_grad():
        for index, seq in enumerate(ids):
            x = torch.tensor([list(seq)], device=device)
            if rows is None:
                logits = model(input_ids=x).logits[0]  # (seq, vocab)
            else:  # the LM head runs at the kept positions only
                keep = torch.tensor(list(rows[index]), device=device, dtype=torch.long)
                logits = model(input_ids=x, logits_to_keep=keep).logits[0]  # (rows, vocab)
            out.append(logits.float().cpu())
    return out


def llama_cpp_logits(
    path: Path, ids: Sequence[Sequence[int]], rows: Sequence[Sequence[int]] | None = None
) -> list[Any]:
    """Float32 logits (seq, vocab) from llama.cpp for each id sequence (``rows``: as
    :func:`hf_logits`)."""
    import numpy as np
    import torch

    from medlora._llama_cpp import open_gguf

    longest = max(len(s) for s in ids)
    llm = open_gguf(path, n_ctx=max(64, longest + 8), logits_all=True)
    out = []
    try:
        for index, seq in enumerate(ids):
            llm.reset()
            llm.eval(list(seq))
            keep = list(range(len(seq))) if rows is None else list(rows[index])
            scores = np.array(llm.scores[keep], dtype=np.float32)
            out.append(torch.from_numpy(scores))
    finally:
        llm.close()
    return out


DEFAULT_TIE_TOLERANCE = 0.1
"""Reference log-probability gap, in nats, below which two tokens count as tied (0.1 nats: the
two probabilities lie within 10.5% of each other, so sampling picks either almost as often)."""


@attrs.frozen(kw_only=True)
class Agreement:
    """How closely one model's next-token distributions follow a reference's."""

    top1: float
    """Share of positions where both pick the same most likely token (raw, no tie allowance)."""
    top1_within_tie: float
    """Share of positions where the candidate's most likely token is the reference's, or one
    the reference itself scores within ``tie_tolerance`` nats of its best: a position whose
    reference is a near coin-flip between two tokens is not counted as a disagreement."""
    tie_tolerance: float
    """The tie allowance used for ``top1_within_tie``, in nats."""
    top1_last: float
    """Share of probes whose last position (the first generated token) agrees (raw)."""
    max_abs_logit_diff: float
    """Largest absolute logit difference at any position."""
    mean_kl: float
    """Mean KL(reference || candidate) per position, in nats."""
    positions: int
    """Positions compared."""
    reply_top1: float | None = None
    """Raw top-1 agreement at the positions of held-out conversations that predict a token of
    an assistant reply (the positions training takes loss on); None when not measured."""
    reply_kl: float | None = None
    """Mean KL(reference || candidate) per reply position, in nats."""
    ppl_ratio: float | None = None
    """Candidate perplexity over reference perplexity of the actual next tokens at the reply
    positions: ``exp(mean NLL candidate - mean NLL reference)``. 1.0 is identical; the export
    gates GGUF files on it (:data:`~medlora.export.DEFAULT_MAX_PPL_RATIO`)."""
    reference_ppl: float | None = None
    """The reference's perplexity of the reply tokens."""
    candidate_ppl: float | None = None
    """The candidate's perplexity of the reply tokens."""
    reply_positions: int = 0
    """Reply positions scored (0: no held-out text was scored)."""
    imatrix: bool | None = None
    """Whether llama.cpp quantized this file with an importance matrix (None: the artefact is
    not a llama.cpp quantization)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for JSON."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ParityRow:
    """One exported artefact measured against its reference, with the gates it was held to."""

    artefact: str
    """Its name: ``merged (nf4-roundtrip)``, ``gguf Q4_K_M``, ..."""
    kind: Literal["merged", "gguf"]
    """``merged`` (measured against the trained model) or ``gguf`` (run in llama.cpp,
    measured against the merged model)."""
    agreement: Agreement
    """What was measured: top-1, KL, perplexity ratio, logit differences."""
    limits: dict[str, float] = attrs.field(factory=dict)
    """The gates applied: ``max_mean_kl`` (merged); ``min_top1_within_tie``,
    ``max_ppl_ratio`` and ``max_reply_kl`` (GGUF)."""
    problems: tuple[str, ...] = ()
    """Every gate the artefact failed, as a sentence naming the figure and its limit (a GGUF
    that runs past EOS where the merged model stops is one too)."""

    @property
    def passed(self) -> bool:
        """Whether the artefact passed every gate."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """``parity.json``'s entry: the measurements, then ``kind``, ``limits``, ``passed``
        and ``problems``."""
        return {
            **self.agreement.to_dict(),
            "kind": self.kind,
            "limits": dict(self.limits),
            "passed": self.passed,
            "problems": list(self.problems),
        }


def compare_replies(
    reference: Sequence[Any], candidate: Sequence[Any], targets: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """Fidelity of ``candidate`` to ``reference`` where it matters: on reply tokens.

    Args:
        reference: Per text, the reference's logits at its scored positions, (n_i, vocab).
        candidate: The candidate's logits at the same positions.
        targets: Per text, the token that actually follows each scored position (n_i ids).

    Returns:
        The ``reply_*``, ``ppl_ratio``, ``reference_ppl``, ``candidate_ppl`` and
        ``reply_positions`` fields of :class:`Agreement` (``attrs.evolve`` them in).
    """
    import math

    import torch

    same = total = 0
    kl_sum = nll_ref = nll_cand = 0.0
    for ref, cand, target in zip(reference, candidate, targets, strict=True):
        vocab = min(ref.shape[-1], cand.shape[-1])
        p = torch.log_softmax(ref[:, :vocab].double(), -1)  # (n, vocab)
        q = torch.log_softmax(cand[:, :vocab].double(), -1)
        index = torch.tensor(list(target), dtype=torch.long)[:, None]
        same += int((p.argmax(-1) == q.argmax(-1)).sum())
        kl_sum += float((p.exp() * (p - q)).sum())
        nll_ref -= float(p.gather(-1, index).sum())
        nll_cand -= float(q.gather(-1, index).sum())
        total += p.shape[0]
    if not total:
        return {}
    return {
        "reply_top1": same / total,
        "reply_kl": kl_sum / total,
        "ppl_ratio": math.exp((nll_cand - nll_ref) / total),
        "reference_ppl": math.exp(nll_ref / total),
        "candidate_ppl": math.exp(nll_cand / total),
        "reply_positions": total,
    }


def compare(
    reference: Sequence[Any],
    candidate: Sequence[Any],
    *,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> Agreement:
    """Compare two lists of (seq, vocab) logits position by position.

    Args:
        reference: The model the candidate should reproduce.
        candidate: The exported model's logits for the same token ids.
        tie_tolerance: Reference log-probability gap (nats) under which the candidate's pick
            still counts for ``top1_within_tie``; 0 makes it equal to raw ``top1``.
    """
    import torch

    same = within = last = total = 0
    max_diff, kl_sum = 0.0, 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        vocab = min(ref.shape[-1], cand.shape[-1])
        ref, cand = ref[:, :vocab].double(), cand[:, :vocab].double()
        picked = cand.argmax(-1)
        same += int((ref.argmax(-1) == picked).sum())
        gap = ref.max(-1).values - ref.gather(-1, picked[:, None])[:, 0]  # >= 0, in nats
        within += int((gap <= tie_tolerance).sum())
        last += int(ref[-1].argmax() == picked[-1])
        total += ref.shape[0]
        max_diff = max(max_diff, float((ref - cand).abs().max()))
        p = torch.log_softmax(ref, -1)
        q = torch.log_softmax(cand, -1)
        kl_sum += float((p.exp() * (p - q)).sum())
    return Agreement(
        top1=same / total,
        top1_within_tie=within / total,
        tie_tolerance=tie_tolerance,
        top1_last=last / len(reference),
        max_abs_logit_diff=max_diff,
        mean_kl=kl_sum / total,
        positions=total,
    )


@attrs.frozen(kw_only=True)
class ModelOutputs:
    """One model's logits on the probe prompts and at the held-out reply positions."""

    probes: list[Any]
    """Per probe, (seq, vocab) logits (:func:`probe_ids`)."""
    replies: list[Any]
    """Per held-out text, (scored positions, vocab) logits (:class:`FidelityText` rows)."""


def hf_outputs(model: Any, ids: Sequence[Sequence[int]], text: FidelityText) -> ModelOutputs:
    """:class:`ModelOutputs` of an HF model."""
    return ModelOutputs(probes=hf_logits(model, ids), replies=hf_logits(model, text.ids, text.rows))


def llama_cpp_outputs(path: Path, ids: Sequence[Sequence[int]], text: FidelityText) -> ModelOutputs:
    """:class:`ModelOutputs` of a GGUF file run by llama.cpp."""
    replies = llama_cpp_logits(path, text.ids, text.rows) if text.ids else []
    return ModelOutputs(probes=llama_cpp_logits(path, ids), replies=replies)


def measure(
    reference: ModelOutputs,
    candidate: ModelOutputs,
    text: FidelityText,
    *,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> Agreement:
    """:func:`compare` on the probes with :func:`compare_replies` on the held-out replies."""
    agreement = compare(reference.probes, candidate.probes, tie_tolerance=tie_tolerance)
    return attrs.evolve(
        agreement, **compare_replies(reference.replies, candidate.replies, text.targets)
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
    from medlora._llama_cpp import open_gguf

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


def chat_path_report(
    path: Path, tokenizer: Any, expected: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """Do llama-cpp-python's chat handler's prompt ids equal training's?

    ``create_chat_completion`` (and so ``medlora serve``) renders the template stored in the
    file with its own Jinja formatter and tokenizes the result without adding BOS; the ids
    must be exactly those medlora trained on: ``expected``, the :func:`probe_ids` of the first
    ``len(expected)`` probes. A template that does not emit ``bos_token`` fails here
    (measured: one token short, every probe).
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from medlora._llama_cpp import open_gguf

    n = len(expected)
    llm = open_gguf(path, n_ctx=64, vocab_only=True)
    mismatched = []
    try:
        formatter = Jinja2ChatFormatter(
            template=llm.metadata.get("tokenizer.chat_template", ""),
            eos_token=tokenizer.eos_token or "",
            bos_token=tokenizer.bos_token or "",
        )
        for index, (conversation, ids) in enumerate(
            zip(probe_conversations(n), expected, strict=True)
        ):
            result = formatter(messages=conversation)
            got = llm.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
            if list(got) != list(ids):
                mismatched.append({"probe": index, "llama_cpp": len(got), "training": len(ids)})
    finally:
        llm.close()
    return {"matching": n - len(mismatched), "total": n, "mismatched": mismatched[:8]}


GENERATION_PROBES = 6
"""Probe conversations whose greedy replies check that llama.cpp stops where the model does."""


def reference_replies(
    model: Any, tokenizer: Any, n: int = GENERATION_PROBES, max_new_tokens: int = 64
) -> list[dict[str, Any]]:
    """Greedy replies of the (merged) HF model to the first ``n`` probe conversations.

    Returns:
        Per probe: ``tokens`` generated (EOS included when reached), ``stopped`` (ended with
        EOS within ``max_new_tokens``) and the decoded ``text``.
    """
    import torch

    from medlora.data import encode_chat

    eos = tokenizer.eos_token_id
    device = next(p for p in model.parameters()).device
    out = []
    with torch.no_grad():
        for conversation in probe_conversations(n):
            prompt = encode_chat(tokenizer, conversation, generation_prompt=True)
            ids = torch.tensor([prompt], device=device)
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )[0, ids.shape[1] :].tolist()
            stopped = bool(generated) and generated[-1] == eos
            text = tokenizer.decode(generated, skip_special_tokens=True)
            out.append({"tokens": len(generated), "stopped": stopped, "text": text})
    return out


def generation_stops(
    path: Path, replies: Sequence[dict[str, Any]], slack: int = 32
) -> dict[str, Any]:
    """Greedy chats through llama.cpp's own chat path (the template embedded in the file) on
    the probes of ``replies`` (from :func:`reference_replies`).

    A probe is ``missed`` when llama.cpp reproduces the HF model's reply, which ends with EOS,
    and then runs on instead of stopping (``finish_reason`` not ``"stop"`` within the reply's
    length plus ``slack`` tokens): the file would ramble past the end of its answer. A
    quantized file whose greedy path leaves the reference's earlier (a near-tie) is counted
    under ``diverged``, which the top-1 agreement already measures.
    """
    from medlora._llama_cpp import open_gguf

    llm = open_gguf(path, n_ctx=512 + max((r["tokens"] for r in replies), default=0) + slack)
    missed, same_text, diverged, stopped, lengths = [], 0, 0, 0, []
    try:
        for index, (conversation, ref) in enumerate(
            zip(probe_conversations(len(replies)), replies, strict=True)
        ):
            reply = llm.create_chat_completion(
                messages=conversation, max_tokens=ref["tokens"] + slack, temperature=0.0
            )
            choice = reply["choices"][0]
            lengths.append(reply["usage"]["completion_tokens"])
            stopped += choice["finish_reason"] == "stop"
            text, expected = (choice["message"]["content"] or "").strip(), ref["text"].strip()
            same_text += text == expected
            if not text.startswith(expected):
                diverged += 1
            elif ref["stopped"] and choice["finish_reason"] != "stop":
                missed.append(index)
    finally:
        llm.close()
    return {
        "probes": len(replies),
        "reference_stopped": sum(bool(r["stopped"]) for r in replies),
        "stopped": stopped,
        "missed": missed,
        "same_text": same_text,
        "diverged": diverged,
        "completion_tokens": lengths,
    }


def chat_template_problems(path: Path, tokenizer: Any) -> list[str]:
    """Structural checks that llama.cpp will format and stop like training did, on the
    metadata as llama.cpp itself reads it (a vocabulary-only load: no weights)."""
    from medlora._llama_cpp import open_gguf
    from medlora._template import served_chat_template

    llm = open_gguf(path, n_ctx=64, vocab_only=True)
    try:
        metadata: dict[str, str] = dict(llm.metadata)
    finally:
        llm.close()

    def token_id(key: str) -> int | None:
        value = metadata.get(key)
        return None if value is None else int(value)

    problems = []
    template = metadata.get("tokenizer.chat_template")
    if template is None:
        problems.append("no tokenizer.chat_template (llama.cpp would fall back to llama-2)")
    elif template != served_chat_template(tokenizer):
        problems.append("tokenizer.chat_template differs from the training tokenizer's")
    eos = token_id("tokenizer.ggml.eos_token_id")
    if eos != tokenizer.eos_token_id:
        problems.append(f"tokenizer.ggml.eos_token_id {eos} != {tokenizer.eos_token_id}")
    if token_id("tokenizer.ggml.bos_token_id") != tokenizer.bos_token_id:
        problems.append("tokenizer.ggml.bos_token_id differs from the training tokenizer's")
    return problems
