"""Train and export with medlora's Python API, end to end, on a tiny offline model.

    python examples/train_and_export.py                  # 30 steps, into ./train-and-export
    python examples/train_and_export.py --steps 2 --out /tmp/x

1. build a tiny Llama model with a real SentencePiece tokenizer (no download),
2. load the embedded synthetic clinical records,
3. train LoRA adapters on the 4-bit NF4 base,
4. export the adapter, merged safetensors and an F16 GGUF file, each checked against training,
5. chat with the GGUF file through llama.cpp.

Swap the tiny model for a TinyLlama directory (``--model``) to do it for real, on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medlora import AdapterExporter, ClinicalDataset, ExportConfig, QLoRATrainer, TrainingConfig
from medlora.export import open_gguf
from medlora.testing import make_tiny_llama


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("train-and-export"),
        help="directory for the model, the run and the export",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a local Llama model directory or hub id (default: a tiny model)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out

    model = args.model or str(make_tiny_llama(out / "tiny-model", pretrain_steps=40))

    dataset = ClinicalDataset.default()
    print(f"{len(dataset)} records: {dict(dataset.report.kinds)}")

    config = TrainingConfig(
        model=model,
        output_dir=out / "run",
        max_steps=args.steps,
        max_seq_len=256,
        micro_batch_size=2,
        learning_rate=1e-3,
        validation_fraction=0.02,
    )
    result = QLoRATrainer(config, train_dataset=dataset).train(progress=False)
    print(
        f"held-out loss {result.initial_eval_loss:.3f} -> {result.final_eval_loss:.3f} "
        f"after {result.steps} steps ({result.seconds:.0f} s)"
    )

    export = AdapterExporter(result, ExportConfig(gguf_types=("F16",))).export(out / "export")
    gguf = export.gguf_files["F16"]
    agreement = export.parity["artefacts"]["gguf F16"]["top1"]
    print(f"merged with {export.merge_strategy!r}; {gguf.name} top-1 agreement {agreement:.3f}")

    llm = open_gguf(gguf, n_ctx=512)
    try:
        reply = llm.create_chat_completion(
            messages=[
                {"role": "system", "content": "You are a careful clinical assistant."},
                {"role": "user", "content": "What are warning signs of sepsis?"},
            ],
            max_tokens=32,
            temperature=0.0,
        )
    finally:
        llm.close()
    print("llama.cpp says:", reply["choices"][0]["message"]["content"])


if __name__ == "__main__":
    main()
