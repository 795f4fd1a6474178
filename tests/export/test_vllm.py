"""vLLM's contract for the exported adapter and merged directories (checked without vLLM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medlora._vllm import VLLM_LORA_MODULES, adapter_problems, merged_problems


def test_exported_adapter_is_lora_servable(exported: Any, trained_run: Any) -> None:
    adapter = exported.adapter_dir
    assert adapter_problems(adapter) == []
    assert exported.parity["vllm"] == {"adapter": [], "merged": []}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(trained_run.base_model)
    assert not config.get("modules_to_save")
    assert {t.rsplit(".", 1)[-1] for t in config["target_modules"]} <= VLLM_LORA_MODULES
    weights = sorted(p.name for p in adapter.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert weights == ["adapter_model.safetensors"]


def test_exported_merged_dir_is_servable(exported: Any) -> None:
    merged = exported.merged_dir
    assert merged_problems(merged) == []
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float16"
    assert "quantization_config" not in config
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == 2
    assert "eos_token" in (merged / "chat_template.jinja").read_text()


def test_broken_directories_are_named(exported: Any, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    shutil.copytree(exported.merged_dir, merged)
    (merged / "tokenizer.model").unlink()
    (merged / "tokenizer.json").unlink()
    (merged / "chat_template.jinja").unlink()
    (merged / "pytorch_model.bin").write_bytes(b"pickle")
    generation = json.loads((merged / "generation_config.json").read_text())
    del generation["eos_token_id"]
    (merged / "generation_config.json").write_text(json.dumps(generation))
    problems = " | ".join(merged_problems(merged))
    for expected in ("no tokenizer: tokenizer.json", "no eos_token_id", "no chat template", ".bin"):
        assert expected in problems, problems

    adapter = tmp_path / "adapter"
    shutil.copytree(exported.adapter_dir, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(modules_to_save=["lm_head"], target_modules=["q_proj", "embed_tokens"])
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    weights["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(8, 1024)
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    problems = " | ".join(adapter_problems(adapter))
    assert "modules_to_save ['lm_head']" in problems and "['embed_tokens']" in problems


def test_sharded_merged_dir_needs_its_index(exported: Any, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    shutil.copytree(exported.merged_dir, sharded)
    (sharded / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(exported.merged_dir, dtype=torch.float16)
    model.save_pretrained(sharded, max_shard_size="1MB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert merged_problems(sharded) == []
    (sharded / "model.safetensors.index.json").unlink()
    assert any("index.json" in p for p in merged_problems(sharded))


def test_a_tokenizer_json_only_model_is_servable(exported: Any, tmp_path: Path) -> None:
    """Byte-level BPE models (SmolLM2, Llama-3) ship tokenizer.json without tokenizer.model;
    vLLM serves them, so the check must not ask for a SentencePiece file."""
    merged = tmp_path / "merged"
    shutil.copytree(exported.merged_dir, merged)
    (merged / "tokenizer.model").unlink()
    assert merged_problems(merged) == []
