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

# Produced by running this test on the code before the typed run record and the split of the
# training loop and the export into short functions (commit 5966b34, torch 2.13 on CPU, the random
# tiny Llama): `pytest tests/test_byte_identity.py -s` prints the digests it measured.
EXPECTED = {
    "adapter/adapter_model.safetensors": (
        "48d48535bd709b313f7edfe81ca0137172b672ab90afbb8edd5e264ef3fd08fb"
    ),
    "gguf/tiny-F16.gguf": "3543ab4f1f95546ae92f514f840f69eeab978f412a963c999b33c8c01909548f",
    "gguf/tiny-lora-F32.gguf": "60057f1b7eae48b5a99ee86ca41c43d974d332c4a5c1e36b9a865f1e66cb26fa",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:the merged model ended none:UserWarning")  # 4 steps: no EOS
def test_adapter_and_gguf_bytes_are_pinned(
    tmp_path: Path, random_model_dir: Path, small_run: SmallRun
) -> None:
    from medlora import AdapterExporter, ExportConfig, QLoRATrainer

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
    digests = {name: _sha256(out / name) for name in EXPECTED}
    print(digests)
    assert exported.gguf_files["F16"] == out / "gguf/tiny-F16.gguf"
    assert digests == EXPECTED
