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
    ParityRow,
    chat_path_report,
    chat_template_problems,
    generation_stops,
    llama_cpp_outputs,
    measure,
    probe_conversations,
    tokenization_report,
)


@attrs.frozen(kw_only=True)
class GgufChecks:
    """What the checks of an export's GGUF files measured and found."""

    rows: tuple[ParityRow, ...]
    """One per file, in ``gguf_types`` order."""
    tokenization: dict[str, Any]
    """llama.cpp's tokenization of the rendered probes against training's."""
    chat_path: dict[str, Any]
    """llama-cpp-python's chat-handler prompt ids against training's."""
    generation: dict[str, Any]
    """Per type: where its greedy replies stop against the merged model's."""
    problems: tuple[str, ...]
    """Problems shared by the files (tokenizer, chat template, chat path)."""


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
) -> GgufChecks:
    """Measure each GGUF and check what the files share.

    Per file: against the merged model's ``reference`` outputs, the perplexity ratio and KL
    on the held-out replies of ``text`` (gated by type), top-1 agreement on ``ids`` (gated
    only for types in ``min_agreement``), and stopping at EOS through llama.cpp's chat path
    wherever the merged model's greedy ``replies``
    (:func:`~medlora.export._parity.reference_replies`) stop. Once (the files share one
    vocabulary and template): llama.cpp's tokenization of the rendered probes, the embedded
    chat template and special ids, and llama-cpp-python's chat-handler prompt ids.
    """
    from medlora.data import render

    agreements = {
        qtype: attrs.evolve(
            measure(
                reference,
                llama_cpp_outputs(path, ids, text),
                text,
                tie_tolerance=config.tie_tolerance,
            ),
            imatrix=qtype in imatrix_types if qtype in IMATRIX_TYPES else None,
        )
        for qtype, path in gguf_files.items()
    }
    first = next(iter(gguf_files.values()))
    texts = [render(tokenizer, c, generation_prompt=True) for c in probe_conversations()]
    report = tokenization_report(first, tokenizer, texts)
    problems: list[str] = []
    if report["matching"] < report["total"]:
        problems.append(
            f"llama.cpp tokenizes {report['total'] - report['matching']} of {report['total']} "
            "probe prompts differently from training (see parity.json 'tokenization')"
        )
    problems += [f"GGUF {p}" for p in chat_template_problems(first, tokenizer)]
    chat_path = chat_path_report(first, tokenizer, ids[:8])
    if chat_path["matching"] < chat_path["total"]:
        wrong = chat_path["total"] - chat_path["matching"]
        problems.append(
            f"llama-cpp-python's chat handler builds {wrong} of {chat_path['total']} probe "
            "prompts with other ids than training (see parity.json 'chat_path')"
        )
    generation = _generation(replies, gguf_files)
    rows = [
        gguf_row(qtype, agreement, config, extra=_stop_problems(qtype, generation[qtype]))
        for qtype, agreement in agreements.items()
    ]
    return GgufChecks(
        rows=tuple(rows),
        tokenization=report,
        chat_path=chat_path,
        generation=generation,
        problems=tuple(problems),
    )


def _generation(replies: list[dict[str, Any]], gguf_files: dict[str, Path]) -> dict[str, Any]:
    """Where each GGUF's greedy replies stop (EOS, embedded chat template), against where the
    merged model's do."""
    if not any(r["stopped"] for r in replies):
        warnings.warn(
            f"the merged model ended none of its {len(replies)} greedy probe replies with EOS, "
            "so stopping in llama.cpp could not be checked: train longer, or check that the "
            "data supervises EOS (ClinicalDataset mask)",
            stacklevel=6,
        )
    return {qtype: generation_stops(path, replies) for qtype, path in gguf_files.items()}


def _stop_problems(qtype: str, row: dict[str, Any]) -> list[str]:
    """A GGUF must stop wherever the merged model does."""
    if not row["missed"]:
        return []
    return [
        f"GGUF {qtype} runs past EOS in llama.cpp's chat path on probes {row['missed']} "
        "where the merged model stops (parity.json 'generation')"
    ]


def gguf_row(
    qtype: str, agreement: Agreement, config: ExportConfig, *, extra: list[str]
) -> ParityRow:
    """The parity row of a GGUF file of ``qtype``: its gates and the ones it failed."""
    return ParityRow(
        artefact=f"gguf {qtype}",
        kind="gguf",
        agreement=agreement,
        limits={
            "min_top1_within_tie": config.threshold(qtype),
            "max_ppl_ratio": config.ppl_ratio_limit(qtype),
            "max_reply_kl": config.reply_kl_limit(qtype),
        },
        problems=tuple(gate_problems(qtype, agreement, config) + extra),
    )


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
