"""FSDP + QLoRA through accelerate (CUDA only; skipped without a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: bf16
num_machines: 1
num_processes: {n}
fsdp_config:
  fsdp_version: 1
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_use_orig_params: true
  fsdp_sync_module_states: true
  fsdp_cpu_ram_efficient_loading: true
  fsdp_state_dict_type: FULL_STATE_DICT
"""

SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
from test_loop import small_data
from medlora import QLoRATrainer, TrainingConfig
QLoRATrainer(TrainingConfig.from_file(sys.argv[1]), dataset=small_data()).train(progress=False)
"""


@pytest.mark.gpu
def test_fsdp_qlora_trains_and_saves_a_loadable_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    from medlora import QuantizationConfig, TrainingConfig
    from medlora.training._model import load_base_model

    n = torch.cuda.device_count()
    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path / "run",
        quantization=QuantizationConfig(quant_storage="bfloat16"),
        max_steps=4,
        micro_batch_size=2,
        max_seq_len=64,
        validation_fraction=0.0,
        gradient_checkpointing="on",
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict(), default=str))
    (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG.format(n=n))
    (tmp_path / "train.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    cmd += [str(tmp_path / "fsdp.yaml"), str(tmp_path / "train.py"), str(tmp_path / "config.json")]
    cmd += [str(Path(__file__).parent)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-4000:]
    meta = json.loads((tmp_path / "run" / "medlora.json").read_text())
    assert meta["world_size"] == n and meta["metrics"]["steps"] == 4
    base = load_base_model(tiny_model_dir, config.quantization)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    assert any("lora_B" in k for k, _ in model.named_parameters())
