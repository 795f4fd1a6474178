"""Model resolution: local directories work offline; hub ids offline fail with a way forward."""

from __future__ import annotations

from pathlib import Path

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
