"""Load the frozen base (4-bit NF4 through bitsandbytes, or 16/32-bit) and attach LoRA.

Precision: the whole model computes in one dtype (bf16 on GPUs that have it): embeddings,
norms, head and LoRA weights are stored in it, so the residual stream, q/k/v, the adapters and
the head all run there, and FSDP sees one dtype per unit. Only fp16 keeps float32 adapter
weights (its gradient scaler cannot unscale fp16 gradients). The loss reduces in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from medlora._errors import ConfigError, ModelLoadError, OutOfMemoryError
from medlora._hub import load_causal_lm
from medlora._optional import require
from medlora.training._config import LoraConfig, QuantizationConfig

LOAD_OOM_ADVICE = (
    "out of accelerator memory while loading the base model: free the GPU (other processes "
    "hold memory: see nvidia-smi), keep the 4-bit quantization on, or use a smaller model"
)

PADDING_FREE_ATTENTION = ("sdpa", "flex_attention", "flash_attention_2", "eager")
"""Attention implementations that separate packed examples from ``position_ids`` alone
(transformers 5 builds the block mask on the device, or runs FlashAttention varlen)."""


@attrs.frozen(kw_only=True)
class Precision:
    """How a run computes, resolved from ``mixed_precision`` and the device."""

    name: str
    """``bf16``, ``fp16`` or ``no`` (float32)."""
    dtype: Any
    """The compute dtype: activations, frozen floating weights and (except fp16) adapters."""

    @property
    def adapter_dtype(self) -> Any:
        """Trainable weights: the compute dtype, float32 under fp16 (for the scaler)."""
        import torch

        return torch.float32 if self.name == "fp16" else self.dtype

    @property
    def autocast(self) -> bool:
        """Whether forward passes run under ``torch.autocast``."""
        return self.name != "no"

    @property
    def scaler(self) -> bool:
        """Whether gradients need a ``GradScaler`` (fp16 only)."""
        return self.name == "fp16"


def resolve_precision(mixed_precision: str, device_type: str) -> Precision:
    """``auto`` -> bf16 on GPUs with bf16, fp16 on older GPUs, float32 (``no``) on CPU."""
    import torch

    name = mixed_precision
    if name == "auto":
        if device_type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "no"
    if name == "fp16" and device_type != "cuda":
        raise ConfigError(
            "mixed_precision 'fp16' needs a CUDA GPU (its gradient scaler); use 'bf16' or "
            "'no' on this machine.",
            field="mixed_precision",
        )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[name]
    return Precision(name=name, dtype=dtype)


def resolve_attention(wanted: str, device_type: str) -> str:
    """``auto`` -> FlashAttention 2 on a GPU where flash-attn is installed, else SDPA."""
    if wanted != "auto":
        return wanted
    if device_type == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def compute_dtype(quant: QuantizationConfig | None) -> Any:
    """Matmul dtype: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    wanted = quant.compute_dtype if quant is not None else "auto"
    if wanted != "auto":
        return getattr(torch, wanted)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def from_pretrained_kwargs(
    quant: QuantizationConfig | None,
    *,
    device: Any = None,
    dtype: Any = None,
    quant_storage: str | None = None,
    attn_implementation: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments :func:`load_base_model` loads the base with (``from_pretrained``'s
    ``dtype``, ``attn_implementation``, ``quantization_config`` and ``device_map``)."""
    import torch

    dtype = compute_dtype(quant) if dtype is None else dtype
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        require("bitsandbytes", "4-bit QLoRA training")
        from transformers import BitsAndBytesConfig

        storage = quant_storage or quant.quant_storage
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=dtype
            if quant.compute_dtype == "auto"
            else getattr(torch, quant.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, "uint8" if storage == "auto" else storage),
        )
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs["device_map"] = {"": device}
    return kwargs


def load_base_model(
    model_dir: Path,
    quant: QuantizationConfig | None,
    *,
    device: Any = None,
    dtype: Any = None,
    quant_storage: str | None = None,
    attn_implementation: str | None = None,
) -> Any:
    """The base causal LM, 4-bit quantized when ``quant`` is given, frozen and in eval mode.

    ``dtype`` (default: :func:`compute_dtype`) is the dtype of every floating weight and of
    the 4-bit matmuls unless ``quant.compute_dtype`` names another; ``quant_storage``
    overrides ``quant.quant_storage`` (``auto`` there means uint8).
    """
    import torch

    kwargs = from_pretrained_kwargs(
        quant,
        device=device,
        dtype=dtype,
        quant_storage=quant_storage,
        attn_implementation=attn_implementation,
    )
    try:
        # read with pread, not a memory map: 4.97 -> 1.98-2.22 GB peak RSS loading the 1.1B base
        # in 4-bit (docs/benchmarks.md)
        model = load_causal_lm(model_dir, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(LOAD_OOM_ADVICE) from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {model_dir}: {exc}") from exc
    if getattr(model.config, "model_type", None) != "llama":
        raise ModelLoadError(
            f"{model_dir} holds a {model.config.model_type!r} model; medlora supports "
            "Llama-architecture models (TinyLlama, Llama 2/3, and compatible)."
        )
    model.requires_grad_(False)
    if quant is not None:
        _keep_cpu_training_layout(model)
    return model


def _keep_cpu_training_layout(model: Any) -> None:
    """Stop bitsandbytes repacking CPU 4-bit weights for inference on the first no-grad
    eval forward: once repacked (on AVX512-BF16 CPUs), every later matmul, training ones
    included, runs a kernel without autograd, so gradients through the frozen base are lost
    and a held-out evaluation changes the training run that follows it."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def count_4bit_linear(model: Any) -> int:
    """How many bitsandbytes ``Linear4bit`` modules the model holds."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def attach_lora(
    model: Any, lora: LoraConfig, *, checkpointing: bool, precision: Precision | None = None
) -> Any:
    """Wrap the frozen base in a peft LoRA model; only adapter weights require gradients.

    Not peft's ``prepare_model_for_kbit_training``: it upcasts embeddings, norms and the head
    to float32, so the residual stream and the head would run in float32 on a bf16 run.
    Non-reentrant checkpointing needs no ``enable_input_require_grads`` either.
    With ``precision``, every floating weight is cast to its dtype (adapters to
    ``precision.adapter_dtype``).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    target = lora.target_modules
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=target if isinstance(target, str) else list(target),
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=list(lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, peft_config, autocast_adapter_dtype=False)
    except ValueError as exc:
        raise ConfigError(f"LoRA cannot be attached: {exc}", field="lora.target_modules") from exc
    if precision is not None:
        for param in peft_model.parameters():
            if type(param).__name__ == "Params4bit" or not param.dtype.is_floating_point:
                continue  # packed 4-bit storage keeps its dtype
            want = precision.adapter_dtype if param.requires_grad else precision.dtype
            if param.dtype != want:
                param.data = param.data.to(want)
    return peft_model


ACTIVATION_ELEMENTS_PER_HIDDEN = 20
"""Saved-for-backward elements per token and layer, per unit of ``hidden_size`` (norms with
their float32 internals, q/k/v/o inputs and outputs, rotary, attention output, LoRA dropout
outputs and masks)."""
ACTIVATION_ELEMENTS_PER_INTERMEDIATE = 6
"""The same per unit of ``intermediate_size`` (gate, up, SiLU, product, down input, dropout).
Both calibrated on the tiny model in bf16: the estimate is 1.1x the saved tensors measured
(tests/training/test_model.py), so ``auto`` errs towards checkpointing."""


def activation_bytes(model_config: Any, tokens: int, dtype_bytes: int) -> int:
    """Estimated activation memory that backward keeps for ``tokens`` tokens without
    gradient checkpointing (FlashAttention-style attention: nothing quadratic is kept)."""
    per_token_layer = (
        ACTIVATION_ELEMENTS_PER_HIDDEN * model_config.hidden_size
        + ACTIVATION_ELEMENTS_PER_INTERMEDIATE * model_config.intermediate_size
    )
    return int(tokens * model_config.num_hidden_layers * per_token_layer * dtype_bytes)


def decide_checkpointing(
    setting: str, model_config: Any, *, tokens: int, dtype: Any, device: Any
) -> tuple[bool, str]:
    """Whether to recompute activations, and why: ``auto`` compares the estimated
    activations of one micro-batch (``tokens``) with 70% of the GPU's free memory."""
    import torch

    if setting != "auto":
        return setting == "on", f"gradient_checkpointing: {setting} (config)"
    if getattr(device, "type", str(device)) != "cuda":
        return False, "gradient_checkpointing auto: off on CPU"
    need = activation_bytes(model_config, tokens, torch.finfo(dtype).bits // 8)
    free, _ = torch.cuda.mem_get_info(device)
    on = need > 0.7 * free
    return on, (
        f"gradient_checkpointing auto: {'on' if on else 'off'} (activations of one micro-batch "
        f"~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)"
    )
