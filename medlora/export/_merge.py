"""Merge a LoRA adapter into 16/32-bit weights, two ways, and measure which is closer.

QLoRA's adapter was trained against dequant(NF4(W)), not W. ``original`` merges into W (what
unsloth, litgpt and LLaMA-Factory do); ``nf4-roundtrip`` merges into dequant(NF4(W)) (axolotl's
default). Which one reproduces the trained model better is measured, not assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlora.training import QuantizationConfig
from medlora.training._model import load_base_model


def load_trained(base_dir: Path, adapter_dir: Path, quant: QuantizationConfig | None) -> Any:
    """The model as it was trained: the (4-bit) base with the adapter applied, in eval mode."""
    from peft import PeftModel

    base = load_base_model(base_dir, quant)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def nf4_roundtrip_(model: Any, quant: QuantizationConfig) -> int:
    """Replace every linear weight that training held in 4-bit by dequant(quant(W)), in place.

    Returns the number of weights replaced. The language-model head stays as is, as it does in
    4-bit loading.
    """
    import bitsandbytes.functional as bnbf
    import torch

    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
                continue
            weight = module.weight.data
            packed, state = bnbf.quantize_4bit(
                weight.contiguous(),
                blocksize=64,
                compress_statistics=quant.double_quant,
                quant_type=quant.quant_type,
            )
            module.weight.data = bnbf.dequantize_4bit(packed, state).to(weight.dtype)
            count += 1
    return count


def merged_model(
    base_dir: Path, adapter_dir: Path, *, strategy: str, quant: QuantizationConfig | None
) -> Any:
    """A plain ``LlamaForCausalLM`` (float32) with the adapter merged in by ``strategy``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if strategy == "nf4-roundtrip":
        nf4_roundtrip_(base, quant or QuantizationConfig())
    model = PeftModel.from_pretrained(base, adapter_dir)
    return model.merge_and_unload().eval()
