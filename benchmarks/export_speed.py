"""Export speed and peak memory: medlora's exporter vs llama.cpp's own tools, same model, same run.

The model has TinyLlama-1.1B's exact shapes (22 layers, 32,000-token vocabulary) and random
weights (``medlora.testing.make_tinyllama_shaped``); a random rank-16 LoRA adapter on all seven
linear layers stands in for a training run. Built once into ``--cache``.

Steps, each in its own child process (wall time; peak RSS from ``RUSAGE_CHILDREN`` of a
one-child wrapper, so each figure is that step's own high-water mark):

- medlora: merge the adapter into the base and write fp16 safetensors + tokenizer
  (``merged``; the exporter's streaming merge, ``write_merged_weights``), ``write_gguf`` F16
  and Q8_0 from the merged directory, ``quantize_gguf`` Q4_K_M from the F16 file.
- ``--peft-merge``: also the previous in-memory merge (float32 model, peft
  ``merge_and_unload``, ``save_pretrained``), for a before/after on the same machine.
- ``--parity``: also the exporter's whole merge step: trained-model reference logits (4-bit
  base + adapter) on the 24 probes, then both strategies written and measured from disk.
- llama.cpp: ``convert_hf_to_gguf.py`` (from the llama-cpp-python sdist) F16 and Q8_0 from the
  same merged directory, ``llama_model_quantize`` Q4_K_M from its F16 file.

    python benchmarks/export_speed.py --sdist /tmp/lcp-sdist/llama_cpp_python-0.3.36
    python benchmarks/export_speed.py --layers 2 ...      # quick check at reduced depth
    python benchmarks/export_speed.py --merge-only --peft-merge --parity   # merge steps only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_WRAPPER = textwrap.dedent(
    """
    import resource, subprocess, sys, time
    t = time.perf_counter()
    code = subprocess.run(sys.argv[1:]).returncode
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print("MEASURED", code, wall, peak)
    """
)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` as the only child of a fresh wrapper; its wall time and peak RSS.

    Dirty pages of the previous step are flushed first (``os.sync``), so no step pays for the
    write-back of the one before it (a 2.2 GB file each).
    """
    os.sync()
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    for detail in (x for x in out.stdout.splitlines() if x.startswith("DETAIL")):
        print(detail)
    line = next((x for x in out.stdout.splitlines() if x.startswith("MEASURED")), None)
    if line is None or line.split()[1] != "0":
        raise RuntimeError(f"{cmd[:3]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    _, _, wall, peak = line.split()
    return {"wall_s": float(wall), "peak_rss_gb": int(peak) / 1e9}


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def build(cache: Path, layers: int, shared: Path) -> tuple[Path, Path]:
    """The TinyLlama-shaped base and a random LoRA adapter, made once."""
    base, adapter = cache / f"tinyllama-{layers}l", cache / f"adapter-{layers}l"
    if not (base / "config.json").is_file():
        from medlora.testing import make_tinyllama_shaped, tokenizer_from_gguf_vocab

        vocab = shared / "data/llama-spm-vocab/ggml-vocab-llama-spm.gguf"
        tok = tokenizer_from_gguf_vocab(vocab, cache / "tokenizer") if vocab.is_file() else None
        make_tinyllama_shaped(base, num_hidden_layers=layers, tokenizer_dir=tok)
    if not (adapter / "adapter_config.json").is_file():
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(adapter)
        del model
    return base, adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/medlora-bench-export"))
    parser.add_argument("--sdist", type=Path, help="unpacked llama-cpp-python sdist")
    parser.add_argument(
        "--merge-only", action="store_true", help="only the merge steps (no GGUF, no llama.cpp)"
    )
    parser.add_argument("--peft-merge", action="store_true", help="also the in-memory merge")
    parser.add_argument("--parity", action="store_true", help="also merge + parity (4-bit)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).parents[2] / "shared")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.sdist is None and not args.merge_only:
        parser.error("--sdist is required unless --merge-only")
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    base, adapter = build(cache, args.layers, args.shared)
    out = cache / "out"
    out.mkdir(exist_ok=True)
    merged = out / "merged"
    t = args.threads
    steps: dict[str, dict[str, float]] = {}

    if args.peft_merge:
        steps["medlora merged HF (fp16), in-memory peft merge (before)"] = measure(
            py(f"""
            import shutil, torch
            from pathlib import Path
            from medlora._hub import copy_tokenizer_files
            from medlora.export._merge import merged_model
            m = merged_model(Path({str(base)!r}), Path({str(adapter)!r}), strategy="original",
                             quant=None)
            m.to(torch.float16).save_pretrained({str(out / "merged-peft")!r}, max_shard_size="2GB")
            copy_tokenizer_files(Path({str(base)!r}), Path({str(out / "merged-peft")!r}))
            """)
        )
    steps["medlora merged HF (fp16), streamed"] = measure(
        py(f"""
        import shutil
        from pathlib import Path
        from medlora._hub import copy_tokenizer_files
        from medlora.export._merge import write_merged_weights
        shutil.rmtree({str(merged)!r}, ignore_errors=True)
        write_merged_weights(Path({str(base)!r}), Path({str(adapter)!r}), Path({str(merged)!r}),
                             strategy="original", quant=None, dtype="float16")
        copy_tokenizer_files(Path({str(base)!r}), Path({str(merged)!r}))
        """)
    )
    if args.parity:
        steps["medlora merge + parity (4-bit reference, 2 strategies)"] = measure(
            py(f"""
            import shutil
            from pathlib import Path
            from medlora import AdapterExporter, ExportConfig
            from medlora._hub import load_tokenizer
            from medlora.export._merge import load_trained, release_memory
            from medlora.export._parity import hf_logits, probe_ids
            from medlora.training import QuantizationConfig
            base, adapter, quant = Path({str(base)!r}), Path({str(adapter)!r}), QuantizationConfig()
            tokenizer = load_tokenizer(base)
            ids = probe_ids(tokenizer)
            def peak(): return open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
            reference = hf_logits(load_trained(base, adapter, quant), ids)
            release_memory()
            print("DETAIL peak RSS after the 4-bit reference:", int(peak()) / 1e6, "GB")
            dst = Path({str(out / "parity")!r}) / "merged"
            shutil.rmtree(dst.parent, ignore_errors=True)
            dst.parent.mkdir()
            exporter = AdapterExporter(dst.parent, ExportConfig())
            strategy, logits, measured = exporter._merge(base, adapter, quant, ids, reference, dst,
                                                         tokenizer)
            print("DETAIL positions", sum(len(s) for s in ids), "kept", strategy, measured)
            """)
        )
    if args.merge_only:
        report(args, steps, out, sum(p.stat().st_size for p in merged.glob("*.safetensors")))
        return
    llama = args.sdist / "vendor/llama.cpp"
    for qtype in ("F16", "Q8_0"):
        steps[f"medlora GGUF {qtype}"] = measure(
            py(f"""
            from medlora.export import write_gguf
            write_gguf({str(merged)!r}, {str(out / f"medlora-{qtype}.gguf")!r}, outtype={qtype!r})
            """)
        )
    steps["medlora GGUF Q4_K_M (from F16)"] = measure(
        py(f"""
        from medlora.export import quantize_gguf
        quantize_gguf({str(out / "medlora-F16.gguf")!r}, {str(out / "medlora-Q4_K_M.gguf")!r},
                      "Q4_K_M", threads={t})
        """)
    )
    env = {"PYTHONPATH": str(llama / "gguf-py")}
    for qtype in ("f16", "q8_0"):
        steps[f"llama.cpp convert_hf_to_gguf.py {qtype.upper()}"] = measure(
            [
                sys.executable,
                str(llama / "convert_hf_to_gguf.py"),
                str(merged),
                "--outtype",
                qtype,
                "--outfile",
                str(out / f"llama-{qtype.upper()}.gguf"),
            ],
            env,
        )
    steps["llama.cpp llama_model_quantize Q4_K_M (from F16)"] = measure(
        py(f"""
        import ctypes, llama_cpp
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        p.nthread = {t}
        assert llama_cpp.llama_model_quantize({str(out / "llama-F16.gguf")!r}.encode(),
            {str(out / "llama-Q4_K_M.gguf")!r}.encode(), ctypes.byref(p)) == 0
        """)
    )
    report(args, steps, out, (out / "medlora-F16.gguf").stat().st_size)
    same = all((out / f"medlora-{q}.gguf").stat().st_size > 0 for q in ("F16", "Q8_0", "Q4_K_M"))
    print("all medlora files written:", same)


def report(
    args: argparse.Namespace, steps: dict[str, dict[str, float]], out: Path, f16: int
) -> None:
    """Print the table (and save it as results.json): RSS against the F16 size in bytes."""
    f16_gb = f16 / 1e9
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; python {platform.python_version()}"
    )
    what = "fp16 safetensors" if args.merge_only else "F16 GGUF"
    print(f"model: TinyLlama-shaped, {args.layers} layers; {what} {f16_gb:.2f} GB")
    print(f"{'step':58} {'wall s':>8} {'peak RSS GB':>12} {'x F16':>6}")
    for name, row in steps.items():
        ratio = row["peak_rss_gb"] / f16_gb
        print(f"{name:58} {row['wall_s']:8.1f} {row['peak_rss_gb']:12.2f} {ratio:6.2f}")
    (out / "results.json").write_text(json.dumps({"f16_gb": f16_gb, "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
