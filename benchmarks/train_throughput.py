"""QLoRA training throughput: medlora's loop against TRL's SFTTrainer on the same config.

TinyLlama-1.1B's exact shapes (32,000 vocabulary, random weights; ``--layers`` shrinks the
depth), NF4 4-bit base with double quantization, LoRA r=16 on all linear layers, rows of
exactly ``--seq-len`` tokens (the same tokens for both trainers; the assistant part of each
row is supervised). Each variant runs in its own process, so peak memory is its own:
``torch.cuda.max_memory_allocated`` on a GPU, peak RSS on CPU.

Reported: tokens/s over the steps after ``--warmup`` (all input tokens), peak memory, and MFU
against the device's dense bf16 peak with model FLOPs = 4 x N per token (forward 2N +
activation gradients 2N; QLoRA computes no weight gradients for the frozen base; the issue's
figure for TinyLlama is 4 x 1.1e9) and with the common 6 x N. No MFU on CPU.

    python benchmarks/train_throughput.py                                   # GPU, full size
    python benchmarks/train_throughput.py --layers 2 --seq-len 256 --batch 4 --steps 6  # CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("medlora", "medlora-full-logits", "trl")
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def _device() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        cores = len(__import__("os").sched_getaffinity(0))
        return f"CPU ({platform.processor() or platform.machine()}, {cores} cores)", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    return name, peak


def _records(n: int, seq_len: int) -> list[dict[str, Any]]:
    """Chats long enough that every row is truncated to exactly ``seq_len`` tokens, with a
    prompt of about a sixth of it."""
    from medlora import ClinicalDataset

    text = " ".join(
        turn["content"] for r in ClinicalDataset.default().records[:40] for turn in r.messages
    ).split()
    prompt, reply = seq_len // 6, seq_len * 2
    out = []
    for i in range(n):
        start = (i * 97) % (len(text) - prompt - reply)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(text[start : start + prompt])},
                    {
                        "role": "assistant",
                        "content": " ".join(text[start + prompt : start + prompt + reply]),
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

    checkpointing = args.checkpointing
    config = TrainingConfig(
        model=str(args.model),
        output_dir=Path(args.work) / args.variant,
        lora=LoraConfig(rank=16, alpha=32, target_modules="all-linear"),
        max_seq_len=args.seq_len,
        micro_batch_size=args.batch,
        max_steps=args.steps,
        warmup_steps=1,
        learning_rate=2e-4,
        validation_fraction=0.0,
        gradient_checkpointing=checkpointing,
        loss_chunk_tokens=0 if args.variant == "medlora-full-logits" else 1024,
        tensorboard=False,
        plot=False,
    )
    data = ClinicalDataset.from_records(_records(args.batch * args.steps, args.seq_len))
    trainer = QLoRATrainer(config, dataset=data)
    trainer.setup()
    examples = trainer._tokenize(data)
    short = [len(e) for e in examples if len(e) != args.seq_len]
    if short:
        raise SystemExit(f"rows shorter than --seq-len: {short[:5]}")
    stamps: list[float] = []

    class Stamp:
        def on_step(self, step: int, logs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    if args.variant.startswith("medlora"):
        trainer.callbacks = [Stamp()]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        stamps.append(time.perf_counter())
        trainer.train(progress=False)
    else:
        _run_trl(args, trainer, examples, stamps)
    steps = len(stamps) - 1 - args.warmup
    seconds = stamps[-1] - stamps[args.warmup]
    return {
        "variant": args.variant,
        "tokens_per_s": steps * args.batch * args.seq_len / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_bytes": _peak_memory(),
        "timed_steps": steps,
    }


def _run_trl(args: argparse.Namespace, trainer: Any, examples: Any, stamps: list[float]) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from medlora.training._model import load_base_model

    del trainer.model  # the same base, loaded again the way a TRL user would pass it
    model = load_base_model(Path(args.model), trainer.config.quantization)
    rows = {
        "input_ids": [e.input_ids for e in examples],
        "completion_mask": [[int(x != -100) for x in e.labels] for e in examples],
    }

    class Stamp(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *a: Any, **k: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    on_gpu = torch.cuda.is_available()
    sft = SFTConfig(
        output_dir=str(Path(args.work) / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        max_length=args.seq_len,
        completion_only_loss=True,
        gradient_checkpointing=args.checkpointing == "on"
        or (args.checkpointing == "auto" and on_gpu),
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_drop_last=True,
    )
    peft_config = PeftLoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
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
    stamps.append(time.perf_counter())
    sft_trainer.train()


def _count_params(model_dir: Path) -> int:
    """Parameters of the unquantized model (embeddings and head included), built on meta."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22, help="decoder layers (22: TinyLlama)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="rows per step (both trainers)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(_run_variant(args)))
        return

    from medlora.testing import make_tinyllama_shaped

    device, peak = _device()
    with tempfile.TemporaryDirectory() as work:
        model = make_tinyllama_shaped(Path(work) / "model", num_hidden_layers=args.layers)
        n_params = _count_params(model)
        results = []
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", str(model)]
            cmd += ["--work", work, "--layers", str(args.layers), "--seq-len", str(args.seq_len)]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--checkpointing", args.checkpointing]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{variant} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"device: {device}; layers {args.layers}, seq {args.seq_len}, batch {args.batch}, "
        f"{args.steps} steps ({args.warmup} untimed), checkpointing {args.checkpointing}, "
        "NF4 + LoRA r=16 all-linear"
    )
    base = next((r for r in results if r["variant"] == "trl"), None)
    print(
        f"{'variant':<22}{'tokens/s':>11}{'s/step':>9}{'peak MiB':>10}"
        f"{'MFU 4N':>9}{'MFU 6N':>9}{'vs TRL':>8}"
    )
    for r in results:
        tps = r["tokens_per_s"]
        mfu4 = f"{4 * n_params * tps / peak:.1%}" if peak else "n/a"
        mfu6 = f"{6 * n_params * tps / peak:.1%}" if peak else "n/a"
        ratio = f"{tps / base['tokens_per_s']:.2f}x" if base else "-"
        print(
            f"{r['variant']:<22}{tps:>11.1f}{r['seconds_per_step']:>9.2f}"
            f"{r['peak_memory_bytes'] / 2**20:>10.0f}{mfu4:>9}{mfu6:>9}{ratio:>8}"
        )
    print(
        f"N = {n_params / 1e9:.3f}e9 parameters; bf16 peak used for MFU: {peak / 1e12:.0f} TFLOP/s"
        if peak
        else f"N = {n_params / 1e9:.3f}e9; MFU: n/a on CPU"
    )


if __name__ == "__main__":
    main()
