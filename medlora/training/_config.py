"""Frozen, validated configs for QLoRA training."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from medlora._config import ConfigBase, in_range, integer, non_negative, one_of, positive
from medlora._deprecated import accepts_old_keywords, renamed, warn_old_attribute
from medlora._errors import ConfigError
from medlora.data import DataConfig, data_config


def _modules(value: str | list[str] | tuple[str, ...]) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    return tuple(value)


@accepts_old_keywords(renamed(rank="r", alpha="lora_alpha", dropout="lora_dropout"))
@attrs.frozen(kw_only=True)
class LoraConfig(ConfigBase):
    """Low-rank adapter settings, under peft's names (passed on to ``peft.LoraConfig``).

    The earlier names (``rank``, ``alpha``, ``dropout``) still work, as keywords and as
    config-file keys, with a :class:`DeprecationWarning`; they go in the next release.
    """

    r: int = attrs.field(default=16, validator=[integer, positive])
    """Rank of each adapter; 8-64 is typical."""
    lora_alpha: float = attrs.field(default=32.0, converter=float, validator=positive)
    """Scale numerator: updates are multiplied by ``lora_alpha / r`` (``lora_alpha / sqrt(r)``
    with rsLoRA)."""
    lora_dropout: float = attrs.field(default=0.05, converter=float, validator=in_range(0.0, 0.9))
    """Dropout on the adapter input."""
    target_modules: str | tuple[str, ...] = attrs.field(default="all-linear", converter=_modules)
    """``"all-linear"`` (QLoRA's choice) or module names such as ``["q_proj", "v_proj"]``."""
    use_rslora: bool = False
    """Rank-stabilised scaling ``lora_alpha / sqrt(r)``."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    modules_to_save: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Fully trained extra modules (e.g. ``lm_head``); vLLM cannot serve such adapters."""

    def __attrs_post_init__(self) -> None:
        if isinstance(self.target_modules, tuple) and not self.target_modules:
            raise ConfigError(
                "target_modules is empty: use 'all-linear' or list module names such as "
                "['q_proj', 'v_proj'].",
                field="target_modules",
            )

    @property
    def rank(self) -> int:
        """Deprecated name of :attr:`r`."""
        warn_old_attribute("LoraConfig.rank", "LoraConfig.r")
        return self.r

    @property
    def alpha(self) -> float:
        """Deprecated name of :attr:`lora_alpha`."""
        warn_old_attribute("LoraConfig.alpha", "LoraConfig.lora_alpha")
        return self.lora_alpha

    @property
    def dropout(self) -> float:
        """Deprecated name of :attr:`lora_dropout`."""
        warn_old_attribute("LoraConfig.dropout", "LoraConfig.lora_dropout")
        return self.lora_dropout


@attrs.frozen(kw_only=True)
class QuantizationConfig(ConfigBase):
    """4-bit storage of the frozen base model (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = attrs.field(default="nf4", validator=one_of("nf4", "fp4"))
    """NF4 (QLoRA's NormalFloat) or plain FP4."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.37 bit per parameter)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = attrs.field(
        default="auto", validator=one_of("auto", "bfloat16", "float16", "float32")
    )
    """Dtype of the 4-bit matmuls; ``auto`` follows the trainer's ``mixed_precision`` (bf16
    where the GPU supports it, fp16 on older GPUs, fp32 on CPU)."""
    quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] = attrs.field(
        default="auto", validator=one_of("auto", "uint8", "bfloat16", "float16", "float32")
    )
    """Storage dtype of the packed 4-bit weights; ``auto`` is ``uint8``, except under
    ``fsdp``, where it is the compute dtype (FSDP shards one dtype per unit)."""


@attrs.frozen(kw_only=True)
class TrainingConfig(ConfigBase):
    """Everything one training run needs; ``medlora train CONFIG`` reads it from YAML/TOML."""

    model: str = attrs.field(validator=attrs.validators.instance_of(str))
    """Local model directory or hub id (e.g. ``TinyLlama/TinyLlama-1.1B-Chat-v1.0``)."""
    output_dir: Path = attrs.field(converter=Path)
    """Run directory: checkpoints, logs, the final adapter and ``medlora.json``."""
    data: DataConfig | None = attrs.field(default=None, converter=data_config)
    """Where the records come from and how they are checked: a :class:`DataConfig`, its
    mapping (a YAML ``data:`` section) or just a file path; ``None`` uses the embedded
    synthetic clinical dataset."""
    lora: LoraConfig = attrs.field(factory=LoraConfig)
    """Adapter settings."""
    quantization: QuantizationConfig | None = attrs.field(factory=QuantizationConfig)
    """4-bit base settings; ``None`` trains plain LoRA on a 16/32-bit base."""
    max_seq_len: int = attrs.field(default=1024, validator=[integer, positive])
    """Examples are truncated to this many tokens."""
    micro_batch_size: int = attrs.field(default=4, validator=[integer, positive])
    """Examples per forward pass."""
    grad_accum_steps: int = attrs.field(default=1, validator=[integer, positive])
    """Micro-batches per optimizer step."""
    max_steps: int = attrs.field(default=100, validator=[integer, positive])
    """Optimizer steps to train for."""
    learning_rate: float = attrs.field(default=2e-4, converter=float, validator=positive)
    """Peak learning rate."""
    weight_decay: float = attrs.field(default=0.0, converter=float, validator=non_negative)
    """AdamW weight decay on adapter weights."""
    warmup_steps: int = attrs.field(default=0, validator=[integer, non_negative])
    """Linear warm-up steps."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = attrs.field(
        default="cosine", validator=one_of("constant", "linear", "cosine")
    )
    """Decay after warm-up."""
    max_grad_norm: float = attrs.field(default=1.0, converter=float, validator=non_negative)
    """Gradient clipping norm; 0 disables clipping."""
    gradient_checkpointing: Literal["auto", "on", "off"] = attrs.field(
        default="auto", validator=one_of("auto", "on", "off")
    )
    """Recompute activations to save memory; ``auto`` turns it on only where the estimated
    activations of one micro-batch would not fit in the GPU's free memory (off on CPU)."""
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = attrs.field(
        default="auto", validator=one_of("auto", "bf16", "fp16", "no")
    )
    """Compute dtype of the whole model (activations, LoRA weights, norms, embeddings, head;
    the loss is reduced in float32): ``auto`` is ``bf16`` on GPUs that have it, ``fp16`` (with
    a gradient scaler and float32 adapter weights) on older GPUs, ``no`` (float32) on CPU."""
    attn_implementation: Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"] = (
        attrs.field(
            default="auto",
            validator=one_of("auto", "sdpa", "flex_attention", "flash_attention_2", "eager"),
        )
    )
    """Attention kernel (transformers' names); ``auto`` is ``flash_attention_2`` on a GPU
    where flash-attn is installed, else ``sdpa``."""
    fsdp: bool = False
    """Shard the model over the launched processes with FSDP2 (``fully_shard`` per decoder
    layer) instead of replicating it (DDP); launch with ``torchrun`` or ``accelerate launch``."""
    validation_fraction: float = attrs.field(
        default=0.1, converter=float, validator=in_range(0.0, 0.5)
    )
    """Share of records (grouped by patient where possible) held out for evaluation, unless
    ``data.eval`` names a file or another fraction."""
    eval_every: int = attrs.field(default=0, validator=[integer, non_negative])
    """Evaluate every N steps (0: only at the start and the end)."""
    early_stopping_patience: int = attrs.field(default=0, validator=[integer, non_negative])
    """Stop after this many evaluations in a row without improvement (0: never stop early)."""
    early_stopping_min_delta: float = attrs.field(
        default=0.0, converter=float, validator=non_negative
    )
    """An evaluation improves only if it beats the best loss by more than this."""
    select_best: bool = True
    """With ``eval_every``, the final adapter is the one with the best held-out loss."""
    optimizer: Literal["adamw", "paged_adamw_8bit"] = attrs.field(
        default="adamw", validator=one_of("adamw", "paged_adamw_8bit")
    )
    """``adamw`` (torch) or bitsandbytes' paged 8-bit AdamW (CUDA only)."""
    save_every: int = attrs.field(default=0, validator=[integer, non_negative])
    """Write a resumable checkpoint every N steps (0: none, except on Ctrl-C)."""
    keep_checkpoints: int = attrs.field(default=2, validator=[integer, positive])
    """How many of the latest checkpoints to keep."""
    resume: bool = False
    """Continue from the latest checkpoint in ``output_dir`` when there is one."""
    packing: bool = False
    """Pack several examples into each ``max_seq_len`` row (best-fit-decreasing), each one
    attending only to itself: fewer padding tokens, same loss. Rows carry ``position_ids``
    that restart per example and no attention mask (transformers builds the block mask on
    the device, or FlashAttention runs variable-length); a dense mask only for attention
    kernels that cannot read ``position_ids``."""
    loss_chunk_tokens: int = attrs.field(default=1024, validator=[integer, non_negative])
    """Compute the head and loss over this many supervised tokens at a time, so the
    (batch, seq, vocab) logits are never held whole (0: all supervised tokens at once)."""
    loss_impl: Literal["auto", "chunked", "fused"] = attrs.field(
        default="auto", validator=one_of("auto", "chunked", "fused")
    )
    """``chunked``: head + cross-entropy per chunk under activation checkpointing (least
    memory; the head runs three times per chunk). ``fused``: the head runs once per chunk and
    the gradient of the hidden states is formed right away. ``auto``: fused on GPUs, chunked
    on CPU."""
    tensorboard: bool = True
    """Also log to TensorBoard (``run_dir/tensorboard``) when it is installed."""
    plot: bool = True
    """Draw ``loss.png`` in the run directory when matplotlib is installed."""
    log_every: int = attrs.field(default=1, validator=[integer, positive])
    """Log (and read the loss from the device) every N steps; callbacks' ``on_step`` runs
    on these steps."""
    seed: int = attrs.field(default=0, validator=integer)
    """Seed for weights of the adapter, data order and dropout."""
    system_prompt: str | None = None
    """System turn added to records that have none."""

    def __attrs_post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError(
                "model is empty: give a local model directory or a hub id.", field="model"
            )
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(
                f"warmup_steps = {self.warmup_steps} must be smaller than max_steps = "
                f"{self.max_steps}; lower warmup_steps.",
                field="warmup_steps",
            )
        if self.early_stopping_patience and not self.eval_every:
            raise ConfigError(
                "early_stopping_patience needs evaluations: set eval_every to a number of steps.",
                field="early_stopping_patience",
            )
