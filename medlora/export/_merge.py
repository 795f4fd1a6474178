"""Merge a LoRA adapter into 16/32-bit weights, two ways, and measure which is closer.

QLoRA's adapter was trained against dequant(NF4(W)), not W. ``original`` merges into W (what
unsloth, litgpt and LLaMA-Factory do); ``nf4-roundtrip`` merges into dequant(NF4(W)) (axolotl's
default). Which one reproduces the trained model better is measured, not assumed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from medlora._optional import require
from medlora.training import QuantizationConfig, load_base_model


def load_trained(base_dir: Path, adapter_dir: Path, quant: QuantizationConfig | None) -> Any:
    """The model as it was trained: the (4-bit) base with the adapter applied, in eval mode."""
    from peft import PeftModel

    base = load_base_model(base_dir, quant)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim``).

    After a model is freed, glibc keeps much of its memory for reuse: measured 0.76 GB still
    resident after freeing the 4-bit 1.1B reference, returned by ``malloc_trim``. Elsewhere
    (other C libraries) this only collects garbage.
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


NF4_BLOCKSIZE = 64
"""Weights per 4-bit quantization block as training's base holds them: bitsandbytes'
``Params4bit`` default, which transformers' 4-bit loading uses (checked against a loaded
weight's ``quant_state.blocksize`` by the tests)."""


def nf4_roundtrip(weight: Any, quant: QuantizationConfig) -> Any:
    """dequant(quant(W)) for one weight, as training's 4-bit base stores it."""
    bnbf = require("bitsandbytes.functional", "the nf4-roundtrip merge")
    packed, state = bnbf.quantize_4bit(
        weight.contiguous(),
        blocksize=NF4_BLOCKSIZE,
        compress_statistics=quant.double_quant,
        quant_type=quant.quant_type,
    )
    return bnbf.dequantize_4bit(packed, state).to(weight.dtype)


def nf4_roundtrip_(model: Any, quant: QuantizationConfig) -> int:
    """Replace every linear weight that training held in 4-bit by dequant(quant(W)), in place.

    Returns the number of weights replaced. The language-model head stays as is, as it does in
    4-bit loading.
    """
    import torch

    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
                continue
            module.weight.data = nf4_roundtrip(module.weight.data, quant)
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


def write_merged_weights(
    base_dir: Path,
    adapter_dir: Path,
    dst: Path,
    *,
    strategy: str,
    quant: QuantizationConfig | None,
    dtype: str,
) -> str:
    """Write the merged weights and ``config.json`` into ``dst``; returns the path taken.

    ``"streamed"``: plain LoRA adapters are merged tensor by tensor from disk to disk
    (:func:`~medlora.export._stream_merge.stream_merge`; peak memory about one float32
    matrix). ``"peft"``: adapters using what the streaming merge does not handle (DoRA,
    ``modules_to_save``, ``alpha_pattern``, ...) go through :func:`merged_model` and
    ``save_pretrained`` instead, which holds the model in float32.
    """
    import gc

    import torch

    from medlora.export._stream_merge import MAX_SHARD_SIZE, stream_merge, unsupported_features

    if not unsupported_features(adapter_dir):
        stream_merge(base_dir, adapter_dir, dst, strategy=strategy, quant=quant, dtype=dtype)
        return "streamed"
    model = merged_model(base_dir, adapter_dir, strategy=strategy, quant=quant)
    model.to(getattr(torch, dtype)).save_pretrained(
        dst, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE
    )
    del model
    gc.collect()
    return "peft"


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    strategy: str = "original",
    quant: QuantizationConfig | None = None,
    dtype: str = "float16",
) -> Path:
    """Merge a peft LoRA adapter into its base and write a Hugging Face directory.

    The merge the exporter writes (``merged/``), without training's measurements: weights
    streamed tensor by tensor (peak memory about one float32 matrix), ``config.json`` and the
    base's tokenizer files. ``strategy`` is ``"original"`` or ``"nf4-roundtrip"`` (merge into
    the 4-bit round trip of the base, quantized as ``quant`` says).

    Returns:
        ``out_dir``, created if missing.
    """
    from medlora._hub import copy_tokenizer_files

    base, out = Path(base_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_merged_weights(base, Path(adapter_dir), out, strategy=strategy, quant=quant, dtype=dtype)
    copy_tokenizer_files(base, out)
    return out


UPCAST_CHUNK_BYTES = 16 * 2**20
"""Largest float32 copy of a weight :func:`load_upcast` makes at once (row chunks)."""


def load_upcast(model_dir: Path) -> Any:
    """Load a saved model keeping its stored 16-bit weights, but computing in float32.

    Linear layers multiply by a float32 copy of their weight made per call, in row chunks of
    at most :data:`UPCAST_CHUNK_BYTES` (the language-model head would otherwise need a full
    float32 copy); embedding outputs are cast to float32 (a lookup commutes with the cast);
    other 16-bit parameters (norms) are parametrized to float32. The logits equal those of
    loading the directory as float32 (tested) while memory holds the 16-bit weights only.
    """
    import types

    import torch
    from torch.nn.utils import parametrize
    from transformers import AutoModelForCausalLM

    class Upcast(torch.nn.Module):
        def forward(self, stored: Any) -> Any:
            return stored.float()

    def float_output(_module: Any, _inputs: Any, output: Any) -> Any:
        return output.float()

    def linear_fp32(self: Any, x: Any) -> Any:
        weight, bias = self.weight, self.bias
        rows = max(1, UPCAST_CHUNK_BYTES // (4 * weight.shape[1]))
        parts = [
            torch.nn.functional.linear(
                x.float(),
                weight[i : i + rows].float(),
                None if bias is None else bias[i : i + rows].float(),
            )
            for i in range(0, weight.shape[0], rows)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    for module in list(model.modules()):
        if isinstance(module, torch.nn.Embedding):
            module.register_forward_hook(float_output)
        elif isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(linear_fp32, module)  # type: ignore[method-assign]
        else:
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_floating_point() and param.dtype != torch.float32:
                    parametrize.register_parametrization(module, name, Upcast(), unsafe=True)
    return model.eval()
