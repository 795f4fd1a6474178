"""Model card (README.md) and Ollama Modelfile written beside every export."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medlora.training import RunRecord

INTENDED_USE = (
    "Research and development of clinical-language assistants. **Not a medical device.** "
    "Outputs can be wrong, incomplete or outdated and must be reviewed by a qualified "
    "clinician before they inform any care decision. Do not use it for diagnosis or treatment "
    "without clinician oversight, and never feed it data you are not permitted to process."
)


def model_card(
    *,
    name: str,
    base_model: str,
    license: str,
    training: RunRecord,
    parity: Mapping[str, Any],
    files: Mapping[str, str],
    version: str,
) -> str:
    """Markdown model card with Hugging Face metadata front matter, for the run ``training``
    records."""
    metrics = training.metrics
    lines = [
        "---",
        f"license: {license}",
        "language: [en]",
        "library_name: transformers",
        f"base_model: {base_model}",
        "pipeline_tag: text-generation",
        "tags: [medlora, qlora, medical, clinical, llama]",
        "---",
        "",
        f"# {name}",
        "",
        f"A LoRA fine-tune of `{base_model}` made with medlora {version} (QLoRA: NF4 4-bit "
        "base, LoRA adapters on the linear layers).",
        "",
        "## Intended use and limitations",
        "",
        INTENDED_USE,
        "",
        "## Files",
        "",
        "| artefact | path |",
        "|---|---|",
        *[f"| {kind} | `{path}` |" for kind, path in files.items()],
        "",
        *_data_card(training),
        "## Training",
        "",
        f"- records: {training.train_records} train, {training.eval_records} held out "
        f"(data fingerprint `{str(training.data_fingerprint)[:16]}`)",
        f"- held-out loss: {metrics.initial_eval_loss:.4f} before, "
        f"{metrics.final_eval_loss:.4f} after {metrics.steps} steps",
        "",
        "```json",
        json.dumps(training.config, indent=2),
        "```",
        "",
        "## Export parity",
        "",
        *_parity_table(parity),
    ]
    if "tokenization" in parity:
        tok = parity["tokenization"]
        lines += [
            "",
            f"Tokenization identical in llama.cpp and transformers on "
            f"{tok['matching']}/{tok['total']} probe texts.",
        ]
        if tok.get("differences"):
            first = tok["differences"][0]
            lines += [
                "",
                f"llama.cpp tokenizes the rendered chat text into {tok['llama_cpp_tokens']} "
                f"tokens where transformers gives {tok['hf_tokens']}: first difference in probe "
                f"{first['probe']} at position {first['position']}, after `{first['after']}`, "
                f"`{first['hf']}` (transformers) vs `{first['llama_cpp']}` (llama.cpp). Feed "
                "llama.cpp token ids, or train with the tokenizer loaded with `legacy=True`, "
                "for identical prompts.",
            ]
    lines += _serving_checks(parity)
    lines.append("")
    return "\n".join(lines)


def _parity_table(parity: Mapping[str, Any]) -> list[str]:
    """Every artefact against its reference: held-out replies first, then the probes."""
    text = parity.get("fidelity_text") or {}
    lines = [
        "Every artefact was compared with its reference (the merged weights with the trained "
        "model, 4-bit base + adapter; each GGUF file, run in llama.cpp, with the merged "
        f"weights) on {text.get('positions', 0)} positions inside the assistant replies of "
        f"{text.get('texts', 0)} conversations ({text.get('source', 'no held-out text')}): "
        "raw top-1 next-token agreement, mean KL divergence per position and the perplexity "
        "ratio of the actual reply tokens (candidate / reference; 1.0 is identical). On the "
        "probe prompts: top-1 agreement (raw, and counting the reference's own near-ties), "
        "and the largest logit difference.",
        "",
        "| artefact | reply top-1 | reply KL | perplexity ratio | imatrix "
        "| probe top-1 | probe top-1 within tie | max abs logit diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for artefact, row in parity.get("artefacts", {}).items():
        imatrix = {True: "yes", False: "no"}.get(row.get("imatrix"), "")
        lines.append(
            f"| {artefact} | {_figure(row.get('reply_top1'), '.4f')} "
            f"| {_figure(row.get('reply_kl'), '.3g')} | {_figure(row.get('ppl_ratio'), '.4f')} "
            f"| {imatrix} | {row['top1']:.4f} | {row['top1_within_tie']:.4f} "
            f"| {row['max_abs_logit_diff']:.4g} |"
        )
    record = parity.get("imatrix")
    if record:
        lines += [
            "",
            f"{', '.join(record['types'])} were quantized by llama.cpp with an importance matrix "
            f"({record['entries']} weight matrices) collected from the merged model on "
            f"{record['tokens']} tokens of {record['source']}.",
        ]
    return lines


def _figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _serving_checks(parity: Mapping[str, Any]) -> list[str]:
    """The chat-path and stop-at-EOS results, one line each, when the export measured them."""
    lines = []
    if "chat_path" in parity:
        path = parity["chat_path"]
        lines += [
            "",
            f"llama-cpp-python's chat handler (as `medlora serve` runs it) builds the training "
            f"token ids on {path['matching']}/{path['total']} probe conversations.",
        ]
    if parity.get("generation"):
        lines += [
            "",
            "| GGUF | greedy replies stopped at `</s>` | same text as merged | ran past EOS |",
            "|---|---|---|---|",
        ]
        for qtype, row in parity["generation"].items():
            lines.append(
                f"| {qtype} | {row['stopped']}/{row['probes']} (merged: "
                f"{row['reference_stopped']}) | {row['same_text']}/{row['probes']} | "
                f"{len(row['missed'])} |"
            )
    return lines


def _data_card(training: RunRecord) -> list[str]:
    """The training data's card (:class:`~medlora.RunDataCard`) as the run's ``medlora.json``
    holds it, when the run recorded one."""
    card = training.to_dict().get("data_card")
    if not card:
        return []
    lines = ["## Training data", ""]
    for key, value in card.items():
        shown = json.dumps(value) if isinstance(value, Mapping | list) else value
        lines.append(f"- {key.replace('_', ' ')}: {shown}")
    lines.append("")
    return lines


def ollama_modelfile(
    gguf_name: str, chat_template: str | None = None, stops: Sequence[str] = ("</s>",)
) -> str:
    """An Ollama Modelfile for ``gguf_name``, stopping at each of ``stops`` (the model's EOS
    and the token its template ends a reply with: :func:`medlora.data.stop_tokens`).

    For medlora's default (Zephyr) chat template the Go ``TEMPLATE`` is written out. Any other
    template cannot be translated from Jinja reliably, so ``TEMPLATE`` is left out and Ollama
    uses the template it recognises from the file's ``tokenizer.chat_template``.
    """
    from medlora._template import is_zephyr

    lines = [f"FROM ./{gguf_name}"]
    zephyr = chat_template is None or is_zephyr(chat_template)
    if zephyr:
        lines += [
            'TEMPLATE """{{ if .System }}<|system|>',
            "{{ .System }}</s>",
            "{{ end }}{{ if .Prompt }}<|user|>",
            "{{ .Prompt }}</s>",
            "{{ end }}<|assistant|>",
            '{{ .Response }}</s>"""',
        ]
    else:
        lines += [
            "# No TEMPLATE: the training chat template is not medlora's Zephyr default, and",
            "# Ollama reads the Jinja template stored in the GGUF (tokenizer.chat_template).",
        ]
    for stop in dict.fromkeys([*stops, *(["<|user|>"] if zephyr else [])]):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join([*lines, "PARAMETER temperature 0.2", ""])


def write_modelfiles(
    dst: Path, gguf_files: dict[str, Path], chat_template: str, stops: Sequence[str]
) -> None:
    """``Modelfile`` (Q4_K_M when written, else the first type) and one ``NAME-TYPE.Modelfile``
    beside each GGUF in ``dst``, for ``ollama create -f``."""
    default = gguf_files.get("Q4_K_M", next(iter(gguf_files.values())))
    (dst / "Modelfile").write_text(ollama_modelfile(default.name, chat_template, stops))
    for path in gguf_files.values():
        text = ollama_modelfile(path.name, chat_template, stops)
        (dst / f"{path.stem}.Modelfile").write_text(text)


def with_evaluation(card: str, table: str) -> str:
    """``card`` with its ``## Evaluation`` section set to ``table`` (added before the parity
    section when the card has none yet, replaced when it has one)."""
    section = (
        "## Evaluation\n\n"
        "Held-out records scored the same way for every model (`medlora eval`):\n\n"
        f"{table.strip()}\n\n"
    )
    start = card.find("## Evaluation\n")
    if start >= 0:
        end = card.find("\n## ", start + 1)
        return card[:start] + section + (card[end + 1 :] if end >= 0 else "")
    anchor = card.find("## Export parity")
    if anchor < 0:
        return card.rstrip("\n") + "\n\n" + section
    return card[:anchor] + section + card[anchor:]
