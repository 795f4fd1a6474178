"""Datasets larger than memory: records vs wall time vs peak RSS, Arrow and in-memory backends.

Writes a synthetic JSON Lines file of a given size (the embedded generator's records from 20
seeds, copied with fresh ids and patient ids until the size is reached), then validates,
tokenizes and packs it (``max_seq_len`` 1,024) in a child process per backend, one at a time:

- ``arrow``: ``ArrowDataset.from_jsonl(...).prepare(..., pack=True)`` (streamed through Arrow
  files in a fresh cache directory);
- ``memory``: ``ClinicalDataset.from_jsonl(...).prepare(..., pack=True)``.

Peak RSS is the child's own ``ru_maxrss`` (the whole process: Python, transformers, the
tokenizer and the data). Generated files go under ``--workdir`` (default: a temporary folder).

    python benchmarks/data_scale.py --sizes 100MB,500MB,2GB --backends arrow
    python benchmarks/data_scale.py --sizes 100MB --backends memory --tokenizer DIR
    python benchmarks/data_scale.py --smoke      # 300 kB with the tiny test tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SMOLLM2 = Path.home() / ".cache" / "medlora" / "models" / "SmolLM2-135M-Instruct"
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(text: str) -> int:
    """``"100MB"`` -> 100,000,000 bytes."""
    text = text.strip().upper()
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def write_jsonl(path: Path, size: int) -> int:
    """A JSONL file of at least ``size`` bytes of varied synthetic records; its record count."""
    from medlora import ClinicalDataset

    pool = [dict(r.source) for seed in range(1, 21) for r in ClinicalDataset.synthetic(seed=seed)]
    written = records = 0
    with path.open("w", encoding="utf-8") as out:
        copy = 0
        while written < size:
            for raw in pool:
                row = {**raw, "id": f"{raw['id']}-c{copy}-{records}"}
                row["patient_id"] = f"{raw['patient_id']}-c{copy}"
                line = json.dumps(row) + "\n"
                out.write(line)
                written += len(line.encode())
                records += 1
                if written >= size:
                    break
            copy += 1
    return records


def child(backend: str, data: Path, tokenizer_dir: Path, cache: Path, max_len: int) -> None:
    """Validate, tokenize and pack ``data`` with one backend; print one JSON line."""
    from transformers import AutoTokenizer

    from medlora import ArrowDataset, ClinicalDataset

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    t0 = time.perf_counter()
    if backend == "arrow":
        records: Any = ArrowDataset.from_jsonl(data, cache_dir=cache, progress=False)
        t1 = time.perf_counter()
        prepared: Any = records.prepare(
            tokenizer, max_seq_len=max_len, pack=True, cache_dir=cache, progress=False
        )
        rows = prepared.rows
    else:
        records = ClinicalDataset.from_jsonl(data)
        t1 = time.perf_counter()
        prepared = records.prepare(tokenizer, max_seq_len=max_len, pack=True)
        rows = len(prepared.bins)
    t2 = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    print(
        json.dumps(
            {
                "backend": backend,
                "records": len(records),
                "examples": prepared.packing.examples,
                "rows": rows,
                "validate_s": round(t1 - t0, 2),
                "prepare_s": round(t2 - t1, 2),
                "wall_s": round(t2 - t0, 2),
                "peak_rss_mb": round(usage.ru_maxrss * scale / 2**20),
            }
        )
    )


def run_child(backend: str, data: Path, tokenizer_dir: Path, workdir: Path, max_len: int) -> Any:
    """Run :func:`child` in a fresh process (its own peak RSS), with an empty cache."""
    cache = workdir / f"cache-{backend}"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", backend, "--data", str(data)]
    cmd += ["--tokenizer", str(tokenizer_dir), "--cache", str(cache), "--max-len", str(max_len)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    wall = max(result["wall_s"], 0.01)
    result["file_mb"] = round(data.stat().st_size / 1e6, 1)
    result["mb_per_s"] = round(data.stat().st_size / 1e6 / wall, 2)
    result["records_per_s"] = round(result["records"] / wall)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


def smoke_tokenizer(workdir: Path) -> Path:
    """The tiny test model's tokenizer (``medlora.testing.make_tiny_llama``)."""
    from medlora.testing import make_tiny_llama

    return make_tiny_llama(workdir / "tiny", seed=0)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100MB", help="comma-separated, e.g. 100MB,2GB")
    parser.add_argument("--backends", default="arrow,memory")
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: SmolLM2-135M")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="300 kB, tiny tokenizer")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.data, args.tokenizer, args.cache, args.max_len)
        return []
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medlora-data-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = ["300KB"] if args.smoke else args.sizes.split(",")
    tokenizer_dir = args.tokenizer or (smoke_tokenizer(workdir) if args.smoke else SMOLLM2)
    results = []
    for size in sizes:
        data = workdir / f"records-{size}.jsonl"
        records = write_jsonl(data, parse_size(size))
        print(f"# {size}: {records} records, {data.stat().st_size / 1e6:.1f} MB", flush=True)
        for backend in args.backends.split(","):
            result = run_child(backend, data, tokenizer_dir, workdir, args.max_len)
            print(json.dumps({"size": size, **result}), flush=True)
            results.append({"size": size, **result})
        data.unlink()
    return results


if __name__ == "__main__":
    main()
