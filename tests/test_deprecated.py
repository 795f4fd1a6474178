"""Names kept for one release: each old keyword, config key and attribute warns and maps onto
its new name; giving both is an error."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest

from medlora import (
    ClinicalDataset,
    ConfigError,
    ExportConfig,
    LoraConfig,
    QLoRATrainer,
    TrainingConfig,
)
from medlora.data import LoadKeywords, LoadOptions


def test_lora_config_takes_peft_names() -> None:
    peft = pytest.importorskip("peft")
    ours = {f.name for f in attrs.fields(LoraConfig)}
    assert ours <= set(peft.LoraConfig.__dataclass_fields__), ours
    assert list(inspect.signature(LoraConfig).parameters)[:3] == ["r", "lora_alpha", "lora_dropout"]


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("rank", "r", 8), ("alpha", "lora_alpha", 4.0), ("dropout", "lora_dropout", 0.0)],
)
def test_old_lora_keywords_warn_and_map(old: str, new: str, value: Any) -> None:
    with pytest.warns(DeprecationWarning, match=f"LoraConfig: {old} is deprecated.*'{new}'"):
        config = LoraConfig(**{old: value})
    assert config == LoraConfig(**{new: value})
    with pytest.warns(
        DeprecationWarning, match=rf"LoraConfig\.{old} is deprecated.*LoraConfig\.{new} instead"
    ):
        assert getattr(config, old) == value


def test_old_and_new_name_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match="give only 'r'") as info:
        LoraConfig(rank=8, r=8)  # type: ignore[call-arg]
    assert info.value.field == "r"


def test_old_keys_in_a_config_file_warn_with_the_file_and_section(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: m\noutput_dir: o\nlora:\n  rank: 4\n  alpha: 8\n")
    with pytest.warns(DeprecationWarning) as caught:
        config = TrainingConfig.from_file(path)
    assert [str(w.message).split(" is deprecated")[0] for w in caught] == [
        f"{path}: lora.rank",
        f"{path}: lora.alpha",
    ]
    assert config.lora == LoraConfig(r=4, lora_alpha=8)
    assert "rank" not in config.to_dict()["lora"]  # written back under the new names


@pytest.mark.parametrize(
    ("old", "on_failure"),
    [
        ({"strict": True}, "raise"),
        ({"strict": False}, "warn"),
        ({"parity": True, "strict": False}, "warn"),
        ({"parity": False}, "ignore"),
        ({"parity": False, "strict": True}, "ignore"),
    ],
)
def test_parity_and_strict_map_onto_on_failure(old: dict[str, bool], on_failure: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"use on_failure={on_failure!r}"):
        config = ExportConfig(**old)  # type: ignore[arg-type]
    assert config.on_failure == on_failure
    assert config == ExportConfig(on_failure=on_failure)  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match="ExportConfig.strict is deprecated"):
        assert config.strict is (on_failure == "raise")
    with pytest.warns(DeprecationWarning, match="ExportConfig.parity is deprecated"):
        assert config.parity is (on_failure != "ignore")


def test_export_config_file_with_strict_warns_and_maps(tmp_path: Path) -> None:
    path = tmp_path / "export.toml"
    path.write_text('formats = ["adapter"]\nstrict = false\n')
    with pytest.warns(DeprecationWarning, match="parity and strict are deprecated"):
        assert ExportConfig.from_file(path).on_failure == "warn"
    with pytest.raises(ConfigError, match="give only on_failure"):
        ExportConfig(strict=False, on_failure="raise")  # type: ignore[call-arg]


def test_trainer_takes_train_dataset_and_dataset_warns(tmp_path: Path) -> None:
    config = TrainingConfig(model="some/model", output_dir=tmp_path)
    data = ClinicalDataset.from_records([{"question": "Dose?", "answer": "5 mg"}])
    trainer = QLoRATrainer(config, train_dataset=data, eval_dataset=data)
    assert trainer.train_dataset is data and trainer.eval_dataset is data
    assert QLoRATrainer(config, data).train_dataset is data  # positional, as before
    with pytest.warns(DeprecationWarning, match="QLoRATrainer: dataset is deprecated"):
        old = QLoRATrainer(config, dataset=data)  # type: ignore[call-arg]
    assert old.train_dataset is data
    with pytest.warns(DeprecationWarning, match="QLoRATrainer.dataset is deprecated"):
        assert old.dataset is data


def test_load_keywords_are_the_load_options() -> None:
    fields = {f.name for f in attrs.fields(LoadOptions)}
    assert set(LoadKeywords.__annotations__) == fields
    for name in ("from_jsonl", "from_json", "from_csv", "from_parquet", "from_hf", "default"):
        hints = typing.get_type_hints(getattr(ClinicalDataset, name), include_extras=True)
        assert hints["options"] == typing.Unpack[LoadKeywords], name
