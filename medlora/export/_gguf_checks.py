"""Every check an export runs on its GGUF files, against the merged model it came from."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from medlora.export._config import ExportConfig
from medlora.export._parity import (
    chat_path_report,
    chat_template_problems,
    compare,
    generation_stops,
    llama_cpp_logits,
    probe_conversations,
    tokenization_report,
)


def check_gguf_files(
    gguf_files: dict[str, Path],
    *,
    ids: list[list[int]],
    merged_logits: list[Any],
    replies: list[dict[str, Any]],
    tokenizer: Any,
    config: ExportConfig,
    parity: dict[str, Any],
) -> list[str]:
    """Measure each GGUF and record the results in ``parity``; returns the problems found.

    Per file: tie-aware top-1 agreement with ``merged_logits`` on ``ids`` against its
    threshold, and stopping at EOS through llama.cpp's chat path wherever the merged model's
    greedy ``replies`` (:func:`~medlora.export._parity.reference_replies`) stop. Once (the
    files share one vocabulary and template): llama.cpp's tokenization of the rendered
    probes, the embedded chat template and special ids, and llama-cpp-python's chat-handler
    prompt ids.
    """
    from medlora.data import render

    problems: list[str] = []
    for qtype, path in gguf_files.items():
        agreement = compare(
            merged_logits, llama_cpp_logits(path, ids), tie_tolerance=config.tie_tolerance
        )
        parity["artefacts"][f"gguf {qtype}"] = agreement.to_dict()
        if agreement.top1_within_tie < config.threshold(qtype):
            problems.append(
                f"GGUF {qtype} top-1 agreement {agreement.top1_within_tie:.4f} "
                f"(raw {agreement.top1:.4f}, ties under {config.tie_tolerance:g} nats "
                f"allowed) < {config.threshold(qtype)}"
            )
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
