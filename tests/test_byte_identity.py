"""The adapter and GGUF bytes of a seeded tiny run stay the same through refactors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import SmallRun

pytest.importorskip("torch")
pytest.importorskip("gguf")

# Float results of the same code differ between CPUs (torch's and bitsandbytes' CPU kernels pick
# their paths by vendor and instruction set), so the digests are pinned per CPU, as
# (vendor, torch's CPU capability). `pytest tests/test_byte_identity.py -s` prints the digests it
# measured: before a refactor, run it on the old code and add an entry for the machine at hand.
# torch 2.13 on CPU, the random tiny Llama.
EXPECTED: dict[tuple[str, str], dict[str, str]] = {
    # An earlier session's machine, on the code before the typed run record and the split of the
    # training loop and the export into short functions (commit 5966b34). Its CPU was not
    # recorded; it is taken to be the Intel Xeon (AMX) earlier sessions ran on.
    ("GenuineIntel", "AVX512"): {
        "adapter/adapter_model.safetensors": (
            "48d48535bd709b313f7edfe81ca0137172b672ab90afbb8edd5e264ef3fd08fb"
        ),
        "gguf/tiny-F16.gguf": "3543ab4f1f95546ae92f514f840f69eeab978f412a963c999b33c8c01909548f",
        "gguf/tiny-lora-F32.gguf": (
            "60057f1b7eae48b5a99ee86ca41c43d974d332c4a5c1e36b9a865f1e66cb26fa"
        ),
    },
    # An AMD EPYC (2026-12-01), on main f0efeca, the code that passed the entry above in CI the
    # day before.
    ("AuthenticAMD", "AVX512"): {
        "adapter/adapter_model.safetensors": (
            "4a023062d9983b6d60aeffe5c4b47abebfcc61dbe2b7dd20b62817ead393a373"
        ),
        "gguf/tiny-F16.gguf": "67c612e4f6a5e109fbfe9e1401d8bb64b86d6dc509e57de949f8297e0a7bd4fd",
        "gguf/tiny-lora-F32.gguf": (
            "e1bf7022ae5a4f068b8c27ef46112019f3f455c7625f13336bbf1ed43a16875e"
        ),
    },
}


def _cpu() -> tuple[str, str]:
    import torch

    vendor = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return vendor, torch.backends.cpu.get_cpu_capability()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:the merged model ended none:UserWarning")  # 4 steps: no EOS
def test_adapter_and_gguf_bytes_are_pinned(
    tmp_path: Path, random_model_dir: Path, small_run: SmallRun
) -> None:
    from medlora import AdapterExporter, ExportConfig, QLoRATrainer

    cpu = _cpu()
    if cpu not in EXPECTED:
        pytest.skip(
            f"no digests pinned for this CPU {cpu}: run this test with -s on the code before "
            "your change and add the printed digests to EXPECTED"
        )
    expected = EXPECTED[cpu]
    config = small_run.config(random_model_dir, tmp_path / "run", max_steps=4)
    result = QLoRATrainer(config, train_dataset=small_run.data(8)).train(progress=False)
    export = ExportConfig(
        formats=("adapter", "gguf", "gguf-adapter"),
        gguf_types=("F16",),
        merge_strategy="nf4-roundtrip",
        imatrix=False,
        fidelity_positions=64,
        on_failure="ignore",
    )
    out = tmp_path / "tiny"
    held, calibration = small_run.data(4, start=40), small_run.data(8)
    exporter = AdapterExporter(result, export, held_out=held, calibration=calibration)
    exported: Any = exporter.export(out)
    digests = {name: _sha256(out / name) for name in expected}
    print(digests)
    assert exported.gguf_files["F16"] == out / "gguf/tiny-F16.gguf"
    assert digests == expected
