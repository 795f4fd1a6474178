"""GGUF fidelity: how closely llama.cpp quantizations follow the HF model on held-out clinical
replies, with and without an importance matrix (llama.cpp's imatrix).

For every type: llama.cpp's quantizer (``medlora.export.quantize_gguf``) from one F16 GGUF,
once plain and, for the K-quants, once with an importance matrix collected from the HF model
(``medlora.export.collect_imatrix``) on calibration text. Each file is run in llama.cpp and
scored against the HF model (float32 compute) at the positions inside assistant replies of
held-out conversations (``medlora.export.FidelityText``, tokenized by ``medlora.data``):
raw top-1 agreement, mean KL(HF || GGUF) per position and the perplexity ratio GGUF / HF of
the actual reply tokens (``medlora.export.compare_replies``).

Held-out text: ACI-Bench (Yim et al. 2023, CC BY 4.0; ``clinicalnlp_taskB_test1.json``,
40 doctor-patient dialogues -> clinical notes, the note as the reply) and the embedded
synthetic records' held-out split. Calibration: ACI-Bench ``train.json`` and the synthetic
training split (no overlap with the held-out text).

    # the F16 file from llama.cpp's own converter (the llama-cpp-python sdist vendors it)
    python $SDIST/vendor/llama.cpp/convert_hf_to_gguf.py $MODEL --outtype f16 \\
        --outfile smol-F16.gguf
    python benchmarks/gguf_fidelity.py --model $MODEL --f16 smol-F16.gguf \\
        --aci ../shared/data/aci-bench --threads 2
    python benchmarks/gguf_fidelity.py --smoke    # tiny in-process model, seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ACI_PROMPT = "Write the clinical note for this doctor-patient conversation.\n\n"
ACI_SYSTEM = "You are a careful clinical documentation assistant."


def aci_records(path: Path) -> list[dict[str, Any]]:
    """ACI-Bench encounters as dialogue -> note chat records."""
    rows = json.loads(path.read_text())["data"]
    return [
        {
            "id": row["file"],
            "messages": [
                {"role": "system", "content": ACI_SYSTEM},
                {"role": "user", "content": ACI_PROMPT + row["src"]},
                {"role": "assistant", "content": row["tgt"]},
            ],
        }
        for row in rows
    ]


def texts(args: argparse.Namespace, tokenizer: Any) -> tuple[dict[str, Any], list[Any]]:
    """Held-out FidelityText per source, and calibration token ids."""
    from medlora.data import ClinicalDataset
    from medlora.export import FidelityText

    train, held = ClinicalDataset.default().split(test_size=0.1, seed=0)
    held_sets = {"synthetic": held} if "synthetic" in args.sources else {}
    calibration_sets = [train]
    if args.aci and "ACI-Bench" in args.sources:
        aci = Path(args.aci)
        held_sets["ACI-Bench"] = ClinicalDataset.from_records(
            aci_records(aci / "clinicalnlp_taskB_test1.json"), source="aci-test1"
        )
        calibration_sets.insert(
            0, ClinicalDataset.from_records(aci_records(aci / "train.json"), source="aci-train")
        )
    fidelity = {
        name: FidelityText.from_examples(
            dataset.tokenize(tokenizer, max_seq_len=args.max_seq_len),
            max_positions=args.positions,
            max_per_text=args.per_text,
            source=name,
        )
        for name, dataset in held_sets.items()
    }
    # calibration: records from each source in turn, up to --imatrix-tokens in all
    pools = [d.tokenize(tokenizer, max_seq_len=args.max_seq_len) for d in calibration_sets]
    calibration: list[Any] = []
    left = args.imatrix_tokens
    for group in itertools.zip_longest(*pools):
        for example in (e for e in group if e is not None):
            if left > 0:
                calibration.append(example.input_ids[:left])
                left -= len(calibration[-1])
    return fidelity, calibration


def smoke_model(root: Path) -> Path:
    from medlora.testing import make_tiny_llama

    return make_tiny_llama(root / "tiny", seed=0, pretrain_steps=20)


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medlora.export import (
        IMATRIX_TYPES,
        collect_imatrix,
        compare_replies,
        hf_logits,
        llama_cpp_logits,
        quantize_gguf,
        write_gguf,
    )

    model_dir = Path(args.model) if args.model else smoke_model(work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    f16 = Path(args.f16) if args.f16 else write_gguf(model_dir, work / "F16.gguf", outtype="F16")
    fidelity, calibration = texts(args, tokenizer)
    for name, text in fidelity.items():
        print(f"held-out {name}: {len(text.ids)} conversations, {text.positions} reply positions")
    started = time.perf_counter()
    reference = {n: hf_logits(model, t.ids, t.rows) for n, t in fidelity.items()}
    print(f"HF reference logits: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    imatrix = collect_imatrix(model, calibration, dataset="ACI-Bench train + synthetic train")
    print(
        f"importance matrix: {len(imatrix.values)} matrices, {imatrix.tokens} tokens, "
        f"{time.perf_counter() - started:.0f} s"
    )
    del model
    rows = []
    plan = [("F16", None)] if not args.no_f16 else []
    for qtype in args.types:
        plan.append((qtype, False))
        if qtype in IMATRIX_TYPES:
            plan.append((qtype, True))
    for qtype, weighted in plan:
        path = f16
        if weighted is not None:
            path = work / f"{qtype}{'-imatrix' if weighted else ''}.gguf"
            quantize_gguf(
                f16, path, qtype, threads=args.threads, imatrix=imatrix if weighted else None
            )
        row: dict[str, Any] = {
            "type": qtype,
            "imatrix": {None: "", False: "no", True: "yes"}[weighted],
            "MB": path.stat().st_size / 1e6,
        }
        for name, text in fidelity.items():
            scores = compare_replies(
                reference[name], llama_cpp_logits(path, text.ids, text.rows), text.targets
            )
            row[name] = scores
        rows.append(row)
        print(table([row], list(fidelity), header=False), flush=True)
    return rows


def table(rows: list[dict[str, Any]], sources: list[str], *, header: bool = True) -> str:
    lines = []
    if header:
        cells = "".join(f" {s} top-1 | {s} KL | {s} ppl ratio |" for s in sources)
        lines += [
            f"| type | imatrix | MB |{cells}",
            "|---|---|---:|" + "---:|---:|---:|" * len(sources),
        ]
    for row in rows:
        cells = "".join(
            f" {row[s]['reply_top1']:.3f} | {row[s]['reply_kl']:.4f} | {row[s]['ppl_ratio']:.4f} |"
            for s in sources
        )
        lines.append(f"| {row['type']} | {row['imatrix']} | {row['MB']:.1f} |{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model directory (default with --smoke: a tiny one)")
    parser.add_argument("--f16", help="its F16 GGUF (default: medlora.export.write_gguf)")
    parser.add_argument("--aci", help="folder with ACI-Bench train.json and *_test1.json")
    parser.add_argument("--types", nargs="+", default=["Q8_0", "Q5_K_M", "Q4_K_M"])
    parser.add_argument("--positions", type=int, default=2560, help="reply positions per source")
    parser.add_argument("--per-text", type=int, default=256, help="reply positions per text")
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument(
        "--imatrix-tokens", type=int, default=8192, help="as ExportConfig.imatrix_tokens"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--sources", nargs="+", default=["synthetic", "ACI-Bench"], help="held-out text sources"
    )
    parser.add_argument("--no-f16", action="store_true", help="leave out the F16 row")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny sizes")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.smoke:
        args.types, args.positions, args.imatrix_tokens = ["Q4_K_M"], 64, 512
        args.max_seq_len, args.aci, args.threads = 256, None, args.threads or 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="gguf-fidelity-") as tmp:
        rows = run(args, Path(tmp))
    sources = [k for k in rows[0] if k not in ("type", "imatrix", "MB")]
    print()
    print(table(rows, sources))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
