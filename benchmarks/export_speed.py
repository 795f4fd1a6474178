"""Export speed and peak memory: medlora's exporter vs llama.cpp's own tools, same model, same run.

The model has TinyLlama-1.1B's exact shapes (22 layers, 32,000-token vocabulary) and random
weights (``medlora.testing.make_tinyllama_shaped``); a random rank-16 LoRA adapter on all seven
linear layers stands in for a training run. Built once into ``--cache``.

Steps, each in its own child process (wall time; peak RSS from ``RUSAGE_CHILDREN`` of a
one-child wrapper, so each figure is that step's own high-water mark):

- medlora: merge the adapter into the base and write fp16 safetensors + tokenizer
  (``merged``; the exporter's streaming merge, ``medlora.export.merge_adapter``),
  ``write_gguf`` F16 and Q8_0 from the merged directory, ``quantize_gguf`` Q4_K_M from the
  F16 file.
- ``--peft-merge``: also the in-memory merge (float32 model, peft ``merge_and_unload``,
  ``save_pretrained``), for a before/after on the same machine.
- llama.cpp: ``convert_hf_to_gguf.py`` (from the llama-cpp-python sdist) F16 and Q8_0 from the
  same merged directory, ``llama_model_quantize`` Q4_K_M from its F16 file.

    python benchmarks/export_speed.py --sdist /tmp/lcp-sdist/llama_cpp_python-0.3.36
    python benchmarks/export_speed.py --layers 2 ...      # quick check at reduced depth
    python benchmarks/export_speed.py --merge-only --peft-merge   # merge steps only
    python benchmarks/export_speed.py --smoke --sdist ...  # the tiny model: checks it runs
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


def build(cache: Path, layers: int, shared: Path, *, tiny: bool = False) -> tuple[Path, Path]:
    """The TinyLlama-shaped base (``tiny``: the 2-layer test model) and a random LoRA adapter,
    made once."""
    name = "tiny" if tiny else f"tinyllama-{layers}l"
    base, adapter = cache / name, cache / f"adapter-{name}"
    if tiny and not (base / "config.json").is_file():
        from medlora.testing import make_tiny_llama

        make_tiny_llama(base, seed=0)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/medlora-bench-export"))
    parser.add_argument("--sdist", type=Path, help="unpacked llama-cpp-python sdist")
    parser.add_argument(
        "--merge-only", action="store_true", help="only the merge steps (no GGUF, no llama.cpp)"
    )
    parser.add_argument("--peft-merge", action="store_true", help="also the in-memory merge")
    parser.add_argument("--shared", type=Path, default=Path(__file__).parents[2] / "shared")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--smoke", action="store_true", help="the 2-layer tiny test model: checks the script runs"
    )
    args = parser.parse_args(argv)
    if args.sdist is None and not args.merge_only:
        parser.error("--sdist is required unless --merge-only")
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    base, adapter = build(cache, args.layers, args.shared, tiny=args.smoke)
    out = cache / "out"
    out.mkdir(exist_ok=True)
    merged = out / "merged"
    t = args.threads
    steps: dict[str, dict[str, float]] = {}

    if args.peft_merge:
        steps["medlora merged HF (fp16), in-memory peft merge (before)"] = measure(
            py(f"""
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer
            base = AutoModelForCausalLM.from_pretrained({str(base)!r}, dtype=torch.float32)
            m = PeftModel.from_pretrained(base, {str(adapter)!r}).merge_and_unload()
            dst = {str(out / "merged-peft")!r}
            m.to(torch.float16).save_pretrained(dst, max_shard_size="2GB")
            AutoTokenizer.from_pretrained({str(base)!r}).save_pretrained(dst)
            """)
        )
    steps["medlora merged HF (fp16), streamed"] = measure(
        py(f"""
        import shutil
        from medlora.export import merge_adapter
        shutil.rmtree({str(merged)!r}, ignore_errors=True)
        merge_adapter({str(base)!r}, {str(adapter)!r}, {str(merged)!r}, dtype="float16")
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
    model = f"TinyLlama-shaped, {args.layers} layers"
    model = "the tiny test model, 2 layers" if args.smoke else model
    print(f"model: {model}; {what} {f16_gb:.2f} GB")
    print(f"{'step':58} {'wall s':>8} {'peak RSS GB':>12} {'x F16':>6}")
    for name, row in steps.items():
        ratio = row["peak_rss_gb"] / f16_gb
        print(f"{name:58} {row['wall_s']:8.1f} {row['peak_rss_gb']:12.2f} {ratio:6.2f}")
    (out / "results.json").write_text(json.dumps({"f16_gb": f16_gb, "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
