"""Everything a lent GPU should measure, in one run of at most 10 minutes on an H100/H200.

1. versions and the device (``versions.txt``); fails early when a needed package is missing;
2. the ``gpu``-marked tests (``gpu-tests.log``);
3. a ``torch.profiler`` summary of one padded and one packed optimizer step on the
   TinyLlama-shaped model: top kernels, the attention kernel SDPA chose, the dtypes of every
   matrix product (``profile.txt``, ``profile.json``);
4. ``train_throughput.py``: TRL vs medlora, padded and packed (``throughput.md``/``.json``).

Every figure goes to files under one directory: ``$OUT`` when set, else ``--out``. No more
than 8 files, so the device tool brings all of them back. ``--dry-run`` runs every stage on
the CPU at tiny sizes (the tiny test model), so the script cannot arrive broken::

    python benchmarks/gpu_run.py                    # on the GPU machine (see docs/benchmarks.md)
    python benchmarks/gpu_run.py --dry-run --out /tmp/gpu-run
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets")
MATMULS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm")
ATTENTION = "scaled_dot_product|flash_attn|flex_attention|_flash_attention|efficient_attention"


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))


def versions(out: Path, *, dry_run: bool) -> dict[str, Any]:
    """Write the versions of the stack and the device; stop when a package is missing."""
    import torch

    found: dict[str, Any] = {"python": platform.python_version()}
    missing = []
    for name in NEEDED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    found["cuda"] = torch.version.cuda
    found["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        found["bf16"] = torch.cuda.is_bf16_supported()
        found["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    found["flash_attn"] = importlib.util.find_spec("flash_attn") is not None
    found["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    (out / "versions.txt").write_text(
        "".join(f"{k}: {v}\n" for k, v in found.items())
        + (f"missing: {', '.join(missing)}\n" if missing else "")
    )
    if missing:
        raise SystemExit(f"missing packages: {', '.join(missing)} (carry their wheels)")
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry-run on a CPU machine")
    return found


def gpu_tests(out: Path, *, dry_run: bool) -> int:
    """Run the gpu-marked tests (on CPU they are collected and skipped)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    cmd += ["tests/training"] if dry_run else ["tests"]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    (out / "gpu-tests.log").write_text(done.stdout + done.stderr)
    return done.returncode if done.returncode != 5 else 0  # 5: no tests ran


def _profile_one(model: Path, work: Path, *, packing: bool, seq_len: int, batch: int) -> Any:
    """Profile the third optimizer step of a short run; count the dtypes of the second's
    matrix products and which attention kernels it called."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    from torch.utils._python_dispatch import TorchDispatchMode

    from medlora import ClinicalDataset, QLoRATrainer, TrainingConfig

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import records

    census: dict[str, dict[str, int]] = {"matmul": {}, "attention": {}}

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = func.overloadpacket.__name__
            if name in MATMULS:
                key = "x".join(sorted({str(a.dtype) for a in args if hasattr(a, "dtype")}))
                census["matmul"][key] = census["matmul"].get(key, 0) + 1
            elif any(k in name for k in ATTENTION.split("|")):
                census["attention"][name] = census["attention"].get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=1))
    mode = Census()

    class Step:
        def on_step(self, step: int, logs: Any) -> None:
            if step == 1:
                mode.__enter__()  # census of step 2 (its Python hooks would skew step 3's times)
            elif step == 2:
                mode.__exit__(None, None, None)
            prof.step()  # profiles step 3

    config = TrainingConfig(
        model=str(model),
        output_dir=work / ("packed" if packing else "padded"),
        max_seq_len=seq_len,
        micro_batch_size=batch,
        max_steps=3,
        warmup_steps=0,
        validation_fraction=0.0,
        packing=packing,
        tensorboard=False,
        plot=False,
    )
    data = ClinicalDataset.from_records(records(batch * 24, seq_len))
    trainer = QLoRATrainer(config, train_dataset=data, callbacks=[Step()])
    with prof:
        trainer.train(progress=False)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=sort, row_limit=25)
    return text, census, dict(trainer.runtime)


def profiles(out: Path, model: Path, *, seq_len: int, batch: int) -> None:
    """One padded and one packed step: profiler tables, attention kernels, matmul dtypes."""
    summary: dict[str, Any] = {}
    texts = []
    with tempfile.TemporaryDirectory() as work:
        for packing in (False, True):
            name = "packed" if packing else "padded"
            text, census, runtime = _profile_one(
                model, Path(work), packing=packing, seq_len=seq_len, batch=batch
            )
            summary[name] = {"census": census, "runtime": runtime}
            texts.append(f"== {name} step: {json.dumps(census)}\n{runtime}\n{text}\n")
    (out / "profile.txt").write_text("\n".join(texts))
    (out / "profile.json").write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--out", default="gpu-run", help="output directory when $OUT is unset")
    parser.add_argument("--skip-tests", action="store_true", help="skip the gpu-marked tests")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log: list[str] = []

    def stage(name: str, started: float) -> None:
        log.append(f"{name}: {time.perf_counter() - started:.1f} s")
        print(log[-1], flush=True)
        (out / "run.log").write_text("\n".join(log) + "\n")

    t = time.perf_counter()
    versions(out, dry_run=args.dry_run)
    stage("versions", t)
    failures = 0
    if not args.skip_tests:
        t = time.perf_counter()
        failures += gpu_tests(out, dry_run=args.dry_run) != 0
        stage("gpu tests", t)
    size = (
        {"seq_len": 128, "batch": 2, "steps": 3, "warmup": 1}
        if args.dry_run
        else {"seq_len": 2048, "batch": 4, "steps": 8, "warmup": 2}
    )
    from medlora.testing import make_tiny_llama, make_tinyllama_shaped

    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        model = Path(work) / "model"
        if args.dry_run:
            make_tiny_llama(model, seed=0)
        else:
            make_tinyllama_shaped(model)
        stage("model", t)
        t = time.perf_counter()
        profiles(out, model, seq_len=size["seq_len"], batch=size["batch"])
        stage("profiles", t)
        t = time.perf_counter()
        cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py")]
        cmd += ["--model-dir", str(model), "--out", str(out)]
        for key in ("seq_len", "batch", "steps", "warmup"):
            cmd += [f"--{key.replace('_', '-')}", str(size[key])]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        log.append(done.stdout.strip() + ("\n" + done.stderr[-3000:] if done.returncode else ""))
        failures += done.returncode != 0
        stage("throughput", t)
    if failures:
        raise SystemExit(f"{failures} stage(s) failed: see {out}")


if __name__ == "__main__":
    main()
