"""Data preparation throughput: medlora vs TRL's SFTTrainer on the same records and tokenizer.

Both sides do template + tokenize + assistant-only mask + best-fit-decreasing packing of the
same synthetic records (the embedded generator resampled with different seeds), with the tiny
model's tokenizer (``medlora.testing.make_tiny_llama``). TRL's side is the dataset preparation
that ``SFTTrainer.__init__`` runs (``SFTTrainer._prepare_dataset``; prompt/completion
conversational records, completion-only loss, ``packing_strategy="bfd"``), timed on its own.

    python benchmarks/data_prep.py               # 50,000 records
    python benchmarks/data_prep.py --records 2000
    python benchmarks/data_prep.py --smoke           # 200 records: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def make_records(n: int) -> list[dict[str, Any]]:
    """``n`` raw synthetic records (the generator's dicts, as a user's JSONL would hold them)."""
    from medlora import ClinicalDataset

    out: list[dict[str, Any]] = []
    seed = 1
    while len(out) < n:
        out.extend(dict(r.source) for r in ClinicalDataset.synthetic(seed=seed, n_per_task=250))
        seed += 1
    return out[:n]


def bench_medlora(records: list[dict[str, Any]], tokenizer: Any, max_len: int) -> dict[str, Any]:
    from medlora import ClinicalDataset

    t0 = time.perf_counter()
    ds = ClinicalDataset.from_records(records)
    t1 = time.perf_counter()
    prepared = ds.prepare(tokenizer, max_seq_len=max_len, pack=True)
    t2 = time.perf_counter()
    assert prepared.packing is not None
    return {
        "validate_s": t1 - t0,
        "prepare_s": t2 - t1,
        "rows": prepared.packing.bins,
        "efficiency": prepared.packing.efficiency,
        "records_per_s": len(records) / (t2 - t0),
    }


def bench_trl(
    records: list[dict[str, Any]], tokenizer: Any, model_dir: Path, max_len: int
) -> dict[str, Any]:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM

    from medlora import ClinicalDataset

    convs = [list(r.messages) for r in ClinicalDataset.from_records(records)]
    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in convs]
    data = datasets.Dataset.from_list(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as out:
        args = trl.SFTConfig(
            output_dir=out,
            max_length=max_len,
            packing=True,
            packing_strategy="bfd",
            completion_only_loss=True,
            report_to=[],
            use_cpu=True,
            bf16=False,
            dataset_num_proc=None,
        )
        # Build the trainer on 8 rows (model setup is not data preparation), then time the
        # preparation SFTTrainer.__init__ runs (``_prepare_dataset``) on all records.
        trainer = trl.SFTTrainer(
            model=model, args=args, train_dataset=data.select(range(8)), processing_class=tokenizer
        )
        t0 = time.perf_counter()
        prepared = trainer._prepare_dataset(
            data, tokenizer, args, packing=True, formatting_func=None, dataset_name="train"
        )
        t1 = time.perf_counter()
    n_rows = len(prepared)
    return {
        "prepare_s": t1 - t0,
        "rows": n_rows,
        "records_per_s": len(records) / (t1 - t0),
        "trl": trl.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true", help="200 records: checks the script runs")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.records = 200

    from transformers import AutoTokenizer

    from medlora.testing import make_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_llama(Path(tmp) / "tiny", seed=0)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        records = make_records(opts.records)
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"{len(records)} records, max_len {opts.max_len}"
        )
        ours = bench_medlora(records, tokenizer, opts.max_len)
        print(f"medlora: {ours}")
        theirs = bench_trl(records, tokenizer, model_dir, opts.max_len)
        print(f"trl:     {theirs}")
        print(f"speed-up: {ours['records_per_s'] / theirs['records_per_s']:.2f}x records/s")


if __name__ == "__main__":
    main()
