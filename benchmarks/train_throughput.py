"""QLoRA training throughput: medlora's loop against TRL's SFTTrainer, like for like.

TinyLlama-1.1B's exact shapes (32,000 vocabulary, random weights; ``--layers`` shrinks the
depth), NF4 4-bit base with double quantization, LoRA r=16 alpha 32 dropout 0.05 on all
linear layers, assistant-only loss, the same tokenized examples (lengths spread from a few
percent of ``--seq-len`` to about half of it, as chat SFT data is), each variant in its own
process.
What both trainers get alike: the same precision (bf16 autocast on a GPU with bf16, float32 on
CPU), the same gradient checkpointing (``--checkpointing``, default off for both), fused AdamW
on CUDA, the same LR schedule, micro-batch and number of rows, and SDPA attention. Packed
variants fill ``--seq-len`` rows by best-fit-decreasing in both (TRL: ``packing=True`` bfd,
which runs padding-free).

Reported: real (non-padding) input tokens/s over the steps after ``--warmup``, peak memory
(``torch.cuda.max_memory_allocated`` after loading the model on a GPU, peak RSS on CPU), MFU
against the GPU's dense bf16 peak with model FLOPs = 4 x N per real token (forward 2N +
activation gradients 2N; the frozen base gets no weight gradients) and with the common 6 x N.

    python benchmarks/train_throughput.py                                   # GPU, full size
    python benchmarks/train_throughput.py --layers 2 --seq-len 256 --batch 2 --steps 5  # CPU
    python benchmarks/train_throughput.py --smoke         # tiny model: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("trl", "medlora", "trl-packed", "medlora-packed")
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def _device() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0))
        return f"CPU ({platform.processor() or platform.machine()}, {cores} cores)", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    return name, peak


def records(n: int, seq_len: int) -> list[dict[str, Any]]:
    """``n`` chats whose lengths spread from a few percent of ``seq_len`` tokens to about half
    of it (1.5-3 tokens a word), a sixth of each the user's prompt."""
    from medlora import ClinicalDataset

    text = " ".join(
        turn["content"] for r in ClinicalDataset.default().records[:40] for turn in r.messages
    ).split()
    out = []
    for i in range(n):
        words = int(seq_len * (0.02 + 0.28 * ((i * 37) % 101) / 100))  # 1.5-3 tokens a word
        prompt = max(words // 6, 4)
        start = (i * 97) % (len(text) - words - prompt)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(text[start : start + prompt])},
                    {
                        "role": "assistant",
                        "content": " ".join(text[start + prompt : start + prompt + words]),
                    },
                ]
            }
        )
    return out


def _peak_memory() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _run_variant(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from medlora import ClinicalDataset, LoraConfig, QLoRATrainer, TrainingConfig

    packed = args.variant.endswith("-packed")
    config = TrainingConfig(
        model=str(args.model),
        output_dir=Path(args.work) / args.variant,
        lora=LoraConfig(
            r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"]
        ),
        max_seq_len=args.seq_len,
        micro_batch_size=args.batch,
        max_steps=args.steps,
        warmup_steps=1,
        learning_rate=2e-4,
        validation_fraction=0.0,
        gradient_checkpointing=args.checkpointing,
        attn_implementation="sdpa",
        packing=packed,
        tensorboard=False,
        plot=False,
    )
    data = ClinicalDataset.from_records(records(args.batch * args.steps * 8, args.seq_len))
    trainer = QLoRATrainer(config, train_dataset=data)
    trainer.setup()
    stamps: list[tuple[float, int]] = []  # (time, real input tokens so far)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if args.variant.startswith("medlora"):

        class Stamp:
            def on_step(self, step: int, logs: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                stamps.append((time.perf_counter(), int(logs["input_tokens"])))

        trainer.callbacks = [Stamp()]
        stamps.append((time.perf_counter(), 0))
        trainer.train(progress=False)
        runtime = dict(trainer.runtime)
    else:
        examples = data.prepare(trainer.tokenizer, max_seq_len=args.seq_len).examples
        runtime = _run_trl(args, trainer, examples, stamps, packed=packed)
    first, last = stamps[args.warmup], stamps[-1]
    steps = len(stamps) - 1 - args.warmup
    seconds = last[0] - first[0]
    return {
        "variant": args.variant,
        "tokens_per_s": (last[1] - first[1]) / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_bytes": _peak_memory(),
        "timed_steps": steps,
        "tokens_per_step": (last[1] - first[1]) / steps,
        "runtime": runtime,
    }


def _run_trl(
    args: argparse.Namespace,
    trainer: Any,
    examples: Any,
    stamps: list[tuple[float, int]],
    *,
    packed: bool,
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    del trainer.model, trainer.objective  # the same base, loaded the way a TRL user loads it
    trainer.model = trainer.objective = None
    if on_gpu:
        torch.cuda.empty_cache()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        quantization_config=quant,
        dtype=dtype,
        attn_implementation="sdpa",
        device_map={"": "cuda" if on_gpu else "cpu"},
    )
    rows = {
        "input_ids": [list(e.input_ids) for e in examples],
        "completion_mask": [[int(x != -100) for x in e.labels] for e in examples],
    }

    class Stamp(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, targs: Any, state: Any, *a: Any, **k: Any) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    sft = SFTConfig(
        output_dir=str(Path(args.work) / args.variant),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        max_length=args.seq_len,
        completion_only_loss=True,
        packing=packed,
        packing_strategy="bfd",
        gradient_checkpointing=args.checkpointing == "on",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,
        use_cpu=not on_gpu,
        optim="adamw_torch_fused" if on_gpu else "adamw_torch",
        max_grad_norm=1.0,
        include_num_input_tokens_seen="non_padding",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_drop_last=True,
    )
    peft_config = PeftLoraConfig(**LORA, task_type="CAUSAL_LM")
    sft_trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=Dataset.from_dict(rows),
        processing_class=trainer.tokenizer,
        peft_config=peft_config,
        callbacks=[Stamp()],
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    stamps.append((time.perf_counter(), 0))
    sft_trainer.train()
    return {"mixed_precision": "bf16" if bf16 else "no", "packing_free": packed}


def _count_params(model_dir: Path) -> int:
    """Parameters of the unquantized model (embeddings and head included), built on meta."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def table(results: list[dict[str, Any]], n_params: int, peak: float | None) -> list[str]:
    """The results as Markdown table rows (with MFU and the ratios to TRL)."""
    lines = [
        "| variant | tokens/s | s/step | tokens/step | peak MiB | MFU 4N | MFU 6N | vs TRL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        tps = r["tokens_per_s"]
        trl = "trl-packed" if r["variant"].endswith("-packed") else "trl"
        base = next((x for x in results if x["variant"] == trl), None)
        mfu4 = f"{4 * n_params * tps / peak:.1%}" if peak else "n/a"
        mfu6 = f"{6 * n_params * tps / peak:.1%}" if peak else "n/a"
        ratio = f"{tps / base['tokens_per_s']:.2f}x" if base else "-"
        mem = f"{r['peak_memory_bytes'] / 2**20:.0f}"
        if base and r is not base:
            mem += f" ({r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x)"
        lines.append(
            f"| {r['variant']} | {tps:.1f} | {r['seconds_per_step']:.3f} | "
            f"{r['tokens_per_step']:.0f} | {mem} | {mfu4} | {mfu6} | {ratio} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--layers", type=int, default=22, help="decoder layers (22: TinyLlama)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="rows per step (both trainers)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--checkpointing", choices=("on", "off"), default="off")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--model-dir", help="an existing model directory (else one is built)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the tiny model, seq 64, batch 2, 3 steps (1 untimed): checks the script runs",
    )
    parser.add_argument("--out", help="also write throughput.json and throughput.md here")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.tiny, args.seq_len, args.batch, args.steps, args.warmup = True, 64, 2, 3, 1
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(_run_variant(args)))
        return

    from medlora.testing import make_tiny_llama, make_tinyllama_shaped

    device, peak = _device()
    with tempfile.TemporaryDirectory() as work:
        model = Path(args.model_dir) if args.model_dir else Path(work) / "model"
        if not args.model_dir:
            if args.tiny:
                make_tiny_llama(model, seed=0)
            else:
                make_tinyllama_shaped(model, num_hidden_layers=args.layers)
        n_params = _count_params(model)
        results, failed = [], []
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", str(model)]
            cmd += ["--work", work, "--seq-len", str(args.seq_len), "--batch", str(args.batch)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--checkpointing", args.checkpointing]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{variant} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                failed.append(variant)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    head = (
        f"device: {device}; {n_params / 1e9:.3f}e9 parameters, seq {args.seq_len}, batch "
        f"{args.batch}, {args.steps} steps ({args.warmup} untimed), checkpointing "
        f"{args.checkpointing}, NF4 + LoRA r=16 all-linear"
        + (f"; MFU against {peak / 1e12:.0f} TFLOP/s bf16" if peak else "; MFU n/a on CPU")
    )
    lines = [head, "", *table(results, n_params, peak)]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {"device": device, "n_params": n_params, "args": vars(args), "results": results}
        (out / "throughput.json").write_text(json.dumps(summary, indent=2))
        (out / "throughput.md").write_text("\n".join(lines) + "\n")
    if failed:
        raise SystemExit(f"variants failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
