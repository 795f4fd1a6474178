"""Every check an export runs on its GGUF files, against the merged model it came from."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs

from medlora.export._config import ExportConfig
from medlora.export._fidelity import FidelityText
from medlora.export._imatrix import IMATRIX_TYPES
from medlora.export._parity import (
    Agreement,
    ModelOutputs,
    chat_path_report,
    chat_template_problems,
    generation_stops,
    llama_cpp_outputs,
    measure,
    probe_conversations,
    tokenization_report,
)


def check_gguf_files(
    gguf_files: dict[str, Path],
    *,
    ids: list[list[int]],
    text: FidelityText,
    reference: ModelOutputs,
    replies: list[dict[str, Any]],
    imatrix_types: tuple[str, ...],
    tokenizer: Any,
    config: ExportConfig,
    parity: dict[str, Any],
    agreements: dict[str, Agreement],
) -> list[str]:
    """Measure each GGUF, record it in ``agreements`` and ``parity``; returns the problems.

    Per file: against the merged model's ``reference`` outputs, the perplexity ratio and KL
    on the held-out replies of ``text`` (gated by type), top-1 agreement on ``ids`` (gated
    only for types in ``min_agreement``), and stopping at EOS through llama.cpp's chat path
    wherever the merged model's greedy ``replies``
    (:func:`~medlora.export._parity.reference_replies`) stop. Once (the files share one
    vocabulary and template): llama.cpp's tokenization of the rendered probes, the embedded
    chat template and special ids, and llama-cpp-python's chat-handler prompt ids.
    """
    from medlora.data import render

    problems: list[str] = []
    for qtype, path in gguf_files.items():
        agreement = attrs.evolve(
            measure(
                reference,
                llama_cpp_outputs(path, ids, text),
                text,
                tie_tolerance=config.tie_tolerance,
            ),
            imatrix=qtype in imatrix_types if qtype in IMATRIX_TYPES else None,
        )
        agreements[f"gguf {qtype}"] = agreement
        problems += gate_problems(qtype, agreement, config)
    first = next(iter(gguf_files.values()))
    texts = [render(tokenizer, c, generation_prompt=True) for c in probe_conversations()]
    report = tokenization_report(first, tokenizer, texts)
    parity["tokenization"] = report
    if report["matching"] < report["total"]:
        problems.append(
            f"llama.cpp tokenizes {report['total'] - report['matching']} of {report['total']} "
            "probe prompts differently from training (see parity.json 'tokenization')"
        )
    problems += [f"GGUF {p}" for p in chat_template_problems(first, tokenizer)]
    chat_path = chat_path_report(first, tokenizer, ids[:8])
    parity["chat_path"] = chat_path
    if chat_path["matching"] < chat_path["total"]:
        wrong = chat_path["total"] - chat_path["matching"]
        problems.append(
            f"llama-cpp-python's chat handler builds {wrong} of {chat_path['total']} probe "
            "prompts with other ids than training (see parity.json 'chat_path')"
        )
    return problems + _check_stops(replies, gguf_files, parity)


def _check_stops(
    replies: list[dict[str, Any]], gguf_files: dict[str, Path], parity: dict[str, Any]
) -> list[str]:
    """Every GGUF must stop (EOS, embedded chat template) wherever the merged model does."""
    found = {qtype: generation_stops(path, replies) for qtype, path in gguf_files.items()}
    parity["generation"] = found
    if not any(r["stopped"] for r in replies):
        warnings.warn(
            f"the merged model ended none of its {len(replies)} greedy probe replies with EOS, "
            "so stopping in llama.cpp could not be checked: train longer, or check that the "
            "data supervises EOS (ClinicalDataset mask)",
            stacklevel=5,
        )
    return [
        f"GGUF {qtype} runs past EOS in llama.cpp's chat path on probes {row['missed']} "
        "where the merged model stops (parity.json 'generation')"
        for qtype, row in found.items()
        if row["missed"]
    ]


def gate_problems(qtype: str, agreement: Agreement, config: ExportConfig) -> list[str]:
    """The gates a GGUF file of ``qtype`` failed: held-out reply perplexity ratio and KL
    (:data:`~medlora.export.DEFAULT_MAX_PPL_RATIO`, :data:`~medlora.export.DEFAULT_MAX_REPLY_KL`),
    and top-1 agreement where ``min_agreement`` names the type."""
    problems = []
    ratio, kl = agreement.ppl_ratio, agreement.reply_kl
    if ratio is not None and ratio > config.ppl_ratio_limit(qtype):
        problems.append(
            f"GGUF {qtype} held-out reply perplexity ratio {ratio:.4f} > "
            f"{config.ppl_ratio_limit(qtype):g} (max_ppl_ratio; {agreement.reply_positions} "
            "positions)"
        )
    if kl is not None and kl > config.reply_kl_limit(qtype):
        problems.append(
            f"GGUF {qtype} held-out reply KL {kl:.4g} nats > {config.reply_kl_limit(qtype):g} "
            "(max_reply_kl)"
        )
    if agreement.top1_within_tie < config.threshold(qtype):
        problems.append(
            f"GGUF {qtype} top-1 agreement {agreement.top1_within_tie:.4f} "
            f"(raw {agreement.top1:.4f}, ties under {config.tie_tolerance:g} nats "
            f"allowed) < {config.threshold(qtype)} (min_agreement)"
        )
    return problems
