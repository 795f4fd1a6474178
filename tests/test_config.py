"""Configs validate on construction, name the field and say how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medlora import ConfigError, ExportConfig, LoraConfig, QuantizationConfig, TrainingConfig


def _base(**kw: object) -> TrainingConfig:
    return TrainingConfig(model="some/model", output_dir=Path("run"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "field", "hint"),
    [
        (lambda: LoraConfig(r=0), "r", "greater than 0"),
        (lambda: LoraConfig(r=4.5), "r", "whole number"),
        (lambda: LoraConfig(lora_dropout=1.5), "lora_dropout", "between 0.0 and 0.9"),
        (lambda: ExportConfig(on_failure="warning"), "on_failure", "did you mean 'warn'"),
        (lambda: LoraConfig(target_modules=[]), "target_modules", "all-linear"),
        (lambda: QuantizationConfig(quant_type="nf5"), "quant_type", "did you mean 'nf4'"),
        (lambda: _base(learning_rate=-1), "learning_rate", "greater than 0"),
        (lambda: _base(max_steps=10, warmup_steps=10), "warmup_steps", "smaller than max_steps"),
        (lambda: _base(lr_scheduler="cosin"), "lr_scheduler", "did you mean 'cosine'"),
        (lambda: TrainingConfig(model=" ", output_dir=Path("r")), "model", "hub id"),
        (lambda: ExportConfig(gguf_types=("Q4_K_Z",)), "gguf_types", "Q4_K_M"),
        (lambda: ExportConfig(formats=("onnx",)), "formats", "gguf"),
        (lambda: ExportConfig(threads=0), "threads", "greater than 0"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(make: Any, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field
    assert field in str(info.value)
    assert hint in str(info.value)


def test_from_file_yaml_and_toml_round_trip(tmp_path: Path) -> None:
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(
        "model: ./tinyllama\noutput_dir: runs/a\nmax_steps: 50\n"
        "lora:\n  r: 8\n  target_modules: [q_proj, v_proj]\n"
        "quantization:\n  double_quant: false\n"
    )
    config = TrainingConfig.from_file(yaml_file)
    assert config.lora.r == 8
    assert config.lora.target_modules == ("q_proj", "v_proj")
    assert config.quantization is not None and config.quantization.double_quant is False
    toml_file = tmp_path / "train.toml"
    toml_file.write_text(
        'model = "./tinyllama"\noutput_dir = "runs/a"\nmax_steps = 50\n'
        '[lora]\nr = 8\ntarget_modules = ["q_proj", "v_proj"]\n'
        "[quantization]\ndouble_quant = false\n"
    )
    assert TrainingConfig.from_file(toml_file) == config
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_unknown_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: m\noutput_dir: o\nlearnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'") as info:
        TrainingConfig.from_file(path)
    assert info.value.path == path
    path.write_text("model: m\noutput_dir: o\nlora:\n  lora_alhpa: 4\n")
    with pytest.raises(ConfigError, match=r"'lora\.lora_alhpa'.*Did you mean 'lora_alpha'"):
        TrainingConfig.from_file(path)


def test_nested_errors_carry_the_dotted_field(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('model = "m"\noutput_dir = "o"\n[lora]\nr = -2\n')
    with pytest.raises(ConfigError) as info:
        TrainingConfig.from_file(path)
    assert info.value.field == "lora.r"
    assert str(path) in str(info.value)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TrainingConfig.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        TrainingConfig.from_file(bad)
    other = tmp_path / "c.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match=r"\.yaml, \.toml or \.json"):
        TrainingConfig.from_file(other)


def test_quantization_none_means_plain_lora() -> None:
    assert _base(quantization=None).quantization is None
