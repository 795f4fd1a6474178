"""QLoRATrainer on the real 4-bit bitsandbytes path, on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from medlora import ClinicalDataset, QLoRATrainer, TrainingConfig
from medlora.training import count_4bit_linear


def test_base_is_really_4bit_nf4_during_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    trainer = QLoRATrainer(TrainingConfig(model=str(tiny_model_dir), output_dir=tmp_path))
    trainer.setup()
    linear4 = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # 2 layers x (q, k, v, o, gate, up, down); lm_head stays in full precision.
    assert len(linear4) == 14 == count_4bit_linear(trainer.model)
    assert all(m.weight.quant_type == "nf4" for m in linear4)
    assert all(m.weight.quant_state.nested for m in linear4)  # double quantization
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_a_template_without_a_reply_end_token_warns_before_training(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A model whose template writes nothing special after a reply could never learn to stop."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config_path = model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    config_path.write_text(json.dumps(tokenizer_config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    trainer = QLoRATrainer(TrainingConfig(model=str(model), output_dir=tmp_path / "run"))
    with pytest.warns(UserWarning, match="writes no special token after an assistant reply"):
        trainer.setup()


def test_seeded_run_lowers_the_loss(trained_run: Any) -> None:
    losses = trained_run.train_losses
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    # Measured: about 4.9 -> 4.4 (train) and 4.70 -> 4.45 (held out) for this seed.
    assert last < first - 0.25, (first, last)
    assert trained_run.final_eval_loss < trained_run.initial_eval_loss - 0.1
    assert trained_run.quantized_modules == 14
    assert math.isfinite(trained_run.final_eval_perplexity)


def test_run_directory_records_config_versions_and_data(trained_run: Any) -> None:
    run = trained_run.run_dir
    meta = json.loads((run / "medlora.json").read_text())
    assert meta["config"]["max_steps"] == 24
    assert meta["versions"]["bitsandbytes"] != "not installed"
    assert len(meta["data_fingerprint"]) == 64
    assert meta["train_records"] + meta["eval_records"] == len(ClinicalDataset.default())
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[-1])["step"] == 24
    adapter = trained_run.adapter_dir
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer.model").is_file()
    assert not list(adapter.glob("*.bin"))


def test_adapter_reloads_in_peft_with_identical_logits(trained_run: Any) -> None:
    import torch
    from peft import PeftModel

    from medlora.training._model import load_base_model

    config = json.loads((trained_run.run_dir / "medlora.json").read_text())["config"]
    assert config["quantization"]["quant_type"] == "nf4"
    from medlora import QuantizationConfig

    quant = QuantizationConfig.from_dict(config["quantization"])
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
    first = PeftModel.from_pretrained(
        load_base_model(trained_run.base_model, quant), trained_run.adapter_dir
    ).eval()
    second = PeftModel.from_pretrained(
        load_base_model(trained_run.base_model, quant), trained_run.adapter_dir
    ).eval()
    with torch.no_grad():
        a, b = first(input_ids=ids).logits, second(input_ids=ids).logits
    assert torch.equal(a, b)


def test_nan_loss_stops_training(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlora import TrainingError
    from medlora.training._objective import CausalLMLoss

    real = CausalLMLoss.forward

    def poisoned(self: Any, *args: Any, **kwargs: Any) -> Any:
        return real(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(CausalLMLoss, "forward", poisoned)
    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path,
        max_steps=3,
        max_seq_len=128,
        validation_fraction=0.0,
    )
    with pytest.raises(TrainingError, match="loss became nan at step 1; lower learning_rate"):
        QLoRATrainer(config).train(progress=False)
    assert not (tmp_path / "adapter").exists()
