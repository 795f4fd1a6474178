"""Model resolution: local directories work offline; hub ids offline fail with a way forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medlora import ModelLoadError, QLoRATrainer, TrainingConfig
from medlora._hub import resolve_model


def test_hub_id_offline_says_how_to_use_a_local_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ModelLoadError) as info:
        resolve_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1" in message
    assert "--local-dir" in message and "pass its path" in message
    assert isinstance(info.value, OSError)


def test_trainer_reports_the_same_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    config = TrainingConfig(model="TinyLlama/TinyLlama-1.1B-Chat-v1.0", output_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"local directory|pass its path"):
        QLoRATrainer(config).train(progress=False)


def test_local_paths(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelLoadError, match="neither an existing directory"):
        resolve_model(tmp_path / "missing" / "deeper" / "model")


def test_an_unsupported_architecture_is_refused_before_any_weights_load(tmp_path: Path) -> None:
    """Only config.json is there: the error must come from it, before tokenizer or weights."""
    import json

    model = tmp_path / "mistral"
    model.mkdir()
    config = {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}
    (model / "config.json").write_text(json.dumps(config))
    trainer = QLoRATrainer(TrainingConfig(model=str(model), output_dir=tmp_path / "run"))
    with pytest.raises(ModelLoadError, match=r"model_type='mistral'.*MistralForCausalLM.*Llama"):
        trainer.setup()


def _path_load(model_dir: Path, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def _assert_same_model(loaded: Any, reference: Any) -> None:
    """Every parameter and buffer equal, in the same dtype, tied alike, with the same config,
    generation config and name."""
    import torch

    expected, got = reference.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        if isinstance(tensor, torch.Tensor):
            assert got[name].dtype == tensor.dtype, name
            assert got[name].device == tensor.device, name
            assert torch.equal(got[name], tensor), name
        else:
            assert got[name] == tensor, name

    def layout(model: Any) -> list[list[tuple[str, Any]]]:
        every = model.named_parameters(remove_duplicate=False)  # tied ones under each name
        return [
            [(n, t.dtype) for n, t in every],
            [(n, t.dtype) for n, t in model.named_parameters()],
            [(n, t.dtype) for n, t in model.named_buffers()],
        ]

    assert layout(loaded) == layout(reference)
    assert loaded.config.to_dict() == reference.config.to_dict()
    assert loaded.config._attn_implementation == reference.config._attn_implementation
    assert loaded.generation_config.to_dict() == reference.generation_config.to_dict()
    assert loaded.name_or_path == reference.name_or_path
    assert loaded.config.name_or_path == reference.config.name_or_path


@pytest.mark.parametrize("quantized", [True, False], ids=["nf4", "float32"])
def test_reading_with_pread_loads_the_path_loaded_model(
    random_model_dir: Path, quantized: bool
) -> None:
    """``load_causal_lm`` (safetensors read with ``pread``, handed over as a state dict) gives
    what ``from_pretrained(model_dir)`` gives, 4-bit quantization state included."""
    pytest.importorskip("bitsandbytes")
    from medlora import QuantizationConfig
    from medlora._hub import load_causal_lm
    from medlora.training._model import from_pretrained_kwargs

    quant = QuantizationConfig() if quantized else None
    attention = "eager" if quantized else None  # given, and transformers' choice
    kwargs = from_pretrained_kwargs(quant, device="cpu", attn_implementation=attention)
    loaded = load_causal_lm(random_model_dir, **kwargs)
    _assert_same_model(loaded, _path_load(random_model_dir, **kwargs))
    assert loaded.name_or_path == str(random_model_dir)
    if quantized:  # the merges' NF4 round trip uses the block size 4-bit loading gave
        from medlora.export._merge import NF4_BLOCKSIZE

        weights = [getattr(m, "weight", None) for m in loaded.modules()]
        states = [w.quant_state for w in weights if hasattr(w, "quant_state")]
        assert states and {s.blocksize for s in states} == {NF4_BLOCKSIZE}


def test_sharded_tied_checkpoint_without_generation_config(
    random_model_dir: Path, tmp_path: Path
) -> None:
    """Shards named by ``model.safetensors.index.json``, tied embeddings (no ``lm_head`` in
    the file) and no ``generation_config.json`` load as the path load has them."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from medlora._hub import load_causal_lm

    config = AutoConfig.from_pretrained(random_model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path, max_shard_size="1MB")
    (tmp_path / "generation_config.json").unlink(missing_ok=True)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = load_causal_lm(tmp_path, dtype=torch.bfloat16)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    _assert_same_model(loaded, _path_load(tmp_path, dtype=torch.bfloat16))


def test_a_bin_checkpoint_loads_by_path(random_model_dir: Path, tmp_path: Path) -> None:
    """Without safetensors files the weights come from ``pytorch_model.bin``, as transformers
    loads them."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from medlora._hub import load_causal_lm

    shutil.copy(random_model_dir / "config.json", tmp_path / "config.json")
    torch.save(load_file(random_model_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    loaded = load_causal_lm(tmp_path, dtype=torch.float32)
    _assert_same_model(loaded, _path_load(tmp_path, dtype=torch.float32))


def test_a_run_on_the_pread_loaded_base_writes_the_same_adapter(
    random_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short QLoRA run writes the same ``adapter_config.json`` (its
    ``base_model_name_or_path`` included) and adapter weights as one whose base was loaded
    by path."""
    pytest.importorskip("bitsandbytes")

    def run(name: str) -> Path:
        config = TrainingConfig(
            model=str(random_model_dir),
            output_dir=tmp_path / name,
            max_steps=2,
            micro_batch_size=2,
            max_seq_len=128,
            seed=0,
        )
        return Path(QLoRATrainer(config).train(progress=False).adapter_dir)

    pread = run("pread")
    monkeypatch.setattr("medlora.training._model.load_causal_lm", _path_load)
    path = run("path")
    config = (pread / "adapter_config.json").read_bytes()
    assert config == (path / "adapter_config.json").read_bytes()
    assert str(random_model_dir).encode() in config
    weights = "adapter_model.safetensors"
    assert (pread / weights).read_bytes() == (path / weights).read_bytes()
