"""RoPE in a GGUF file: what llama.cpp needs for each Hugging Face ``rope_type``.

* ``default``: only ``rope.freq_base`` (and ``rope.dimension_count``, written for every model).
* ``linear``: ``rope.scaling.type = linear`` and ``rope.scaling.factor``.
* ``llama3`` (Llama 3.1/3.2/3.3): no scaling keys, but a ``rope_freqs.weight`` tensor (F32,
  ``head_dim / 2`` values) that llama.cpp divides each rotary frequency by. It is computed here
  as transformers' ``_compute_llama3_parameters`` scales the frequencies: kept above
  ``high_freq_factor``, divided by ``factor`` below ``low_freq_factor``, interpolated between.

Anything else (``yarn``, ``dynamic``, ``longrope``...) raises :class:`ExportError` before a
byte is written. The parameters are read from transformers 5's ``rope_parameters`` or, for
older ``config.json`` files, from ``rope_scaling`` and ``rope_theta``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medlora._errors import ExportError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
"""``rope_type`` values medlora's GGUF export writes."""
ROPE_FREQS_TENSOR = "rope_freqs.weight"
"""llama.cpp's name for the per-frequency divisors of ``llama3`` RoPE."""

_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class Rope:
    """The RoPE settings of one model, as the GGUF file needs them."""

    theta: float
    """Base of the rotary frequencies (``rope_theta``)."""
    kind: str
    """One of :data:`SUPPORTED_ROPE_TYPES`."""
    factor: float = 1.0
    """Scaling factor (``linear`` and ``llama3``)."""
    low_freq_factor: float = 1.0
    """``llama3``: wavelengths above ``original_context / low_freq_factor`` are divided."""
    high_freq_factor: float = 4.0
    """``llama3``: wavelengths below ``original_context / high_freq_factor`` are kept."""
    original_context: int = 8192
    """``llama3``: ``original_max_position_embeddings``."""


def read_rope(config: Mapping[str, Any]) -> Rope:
    """The RoPE settings in a ``config.json`` (transformers 5 or older layouts).

    Raises:
        ExportError: A ``rope_type`` llama.cpp needs other keys for than medlora writes, or a
            ``llama3``/``linear`` entry that lacks its parameters.
    """
    params: Mapping[str, Any] = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if isinstance(params.get("full_attention"), Mapping):  # per-layer-type layout
        params = params["full_attention"]
    theta = float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)
    kind = str(params.get("rope_type") or params.get("type") or "default").lower()
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ExportError(
            f"RoPE scaling {kind!r} cannot be exported to GGUF by medlora, which writes "
            f"{', '.join(SUPPORTED_ROPE_TYPES)} RoPE; convert this model with llama.cpp's "
            "convert_hf_to_gguf.py instead"
        )
    needed = {"default": (), "linear": ("factor",), "llama3": _LLAMA3_KEYS}[kind]
    missing = [key for key in needed if params.get(key) is None]
    if missing:
        raise ExportError(f"RoPE scaling {kind!r} in config.json lacks {', '.join(missing)}")
    if kind == "default":
        return Rope(theta=theta, kind=kind)
    if kind == "linear":
        return Rope(theta=theta, kind=kind, factor=float(params["factor"]))
    return Rope(
        theta=theta,
        kind=kind,
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_context=int(params["original_max_position_embeddings"]),
    )


def add_rope_keys(writer: Any, gguf: Any, rope: Rope) -> None:
    """Write the scaling keys (``rope.freq_base`` is written with the other hyperparameters)."""
    if rope.kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope.factor)


def rope_freqs(rope: Rope, head_dim: int) -> Any | None:
    """The ``rope_freqs.weight`` values (float32, ``head_dim // 2``) for ``llama3`` RoPE;
    ``None`` for the other types, which need no tensor.

    Computed in float32 torch arithmetic, element for element as llama.cpp's converter does,
    so the tensor is byte-identical to its file (a float64 computation differs in the last
    bit of the interpolated band for some bases).
    """
    if rope.kind != "llama3":
        return None
    import torch

    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    frequencies = 1.0 / rope.theta**exponents
    wavelen = 2 * math.pi / frequencies
    smooth = (rope.original_context / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    between = 1 / ((1 - smooth) / rope.factor + smooth)
    kept = wavelen < rope.original_context / rope.high_freq_factor
    divided = wavelen > rope.original_context / rope.low_freq_factor
    divisors = torch.where(kept, 1.0, torch.where(divided, rope.factor, between))
    return divisors.to(torch.float32).numpy()
