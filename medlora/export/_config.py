"""Frozen, validated export settings."""

from __future__ import annotations

from typing import Literal

import attrs

from medlora._config import ConfigBase, in_range, one_of
from medlora._errors import ConfigError
from medlora.export._gguf import GGUF_LLAMA_CPP_TYPES, GGUF_NUMPY_TYPES
from medlora.export._parity import DEFAULT_TIE_TOLERANCE

FORMATS = ("adapter", "merged", "gguf", "gguf-adapter")
DEFAULT_FORMATS = ("adapter", "merged", "gguf")
GGUF_TYPES = tuple(dict.fromkeys(GGUF_NUMPY_TYPES + GGUF_LLAMA_CPP_TYPES))

DEFAULT_MIN_AGREEMENT = {
    "F32": 1.0,
    "F16": 1.0,
    "BF16": 0.995,
    "Q8_0": 0.99,
    "Q6_K": 0.98,
    "Q5_K_M": 0.9,
    "Q4_K_M": 0.8,
    "Q4_0": 0.75,
    "Q3_K_M": 0.7,
    "Q2_K": 0.45,
}
"""Minimum top-1 next-token agreement with the merged HF model over every probe position,
counting reference near-ties (``tie_tolerance``) as agreement.

Gates against broken exports (a wrong permutation or vocabulary scores near 0), set under the
lowest value measured on three correctly converted tiny models (60-step base + 24 QLoRA
steps / the quickstart's / a 300-step base), 1,311 probe positions each: F32, F16, BF16 and
Q8_0 1.000 on all three; Q6_K 0.996-1.000; Q5_K_M 0.944-0.999; Q4_K_M 0.844-0.982; Q4_0
0.817-0.960; Q3_K_M 0.767-0.960; Q2_K 0.529-0.792. Small models are far more sensitive to
4-bit error than large ones; raise the bars for your model with ``min_agreement`` (the test
suite exports its tiny model with Q4_K_M at 0.95)."""


DEFAULT_MAX_MERGE_KL = {"nf4-roundtrip": 1e-3, "original": 1e-2}
"""Largest mean KL(trained || merged) per probe position, in nats, for each merge strategy.

Measured on the float16 directory that ships. ``nf4-roundtrip`` reproduces the trained model up
to fp16 rounding (6.2e-8 on the tiny model, 1.8e-6 on the 1.1B random model; bf16 compute on
a GPU adds noise well below 1e-3). ``original`` carries the NF4 quantization error the adapter
was trained against by construction (3.2e-3 on the tiny model, top-1 agreement 0.95), so it
gets a 10x looser bound; past 1e-2 the merge changes answers, not only rounding."""


def _tuple_upper(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).upper() for v in items)


def _tuple(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _subset(allowed: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def check(
        _inst: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
    ) -> None:
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ConfigError(
                f"{attribute.name} has unknown entries {bad}; choose from {', '.join(allowed)}.",
                field=attribute.name,
            )

    return check


@attrs.frozen(kw_only=True)
class ExportConfig(ConfigBase):
    """What :class:`~medlora.AdapterExporter` writes and how strictly it checks it."""

    formats: tuple[str, ...] = attrs.field(
        default=DEFAULT_FORMATS, converter=_tuple, validator=_subset(FORMATS)
    )
    """Any of ``adapter`` (peft directory), ``merged`` (HF safetensors for vLLM), ``gguf``
    (merged model as GGUF), ``gguf-adapter`` (the LoRA alone as a llama.cpp GGUF adapter, to
    apply on a GGUF of the base model with ``lora_path``)."""
    gguf_types: tuple[str, ...] = attrs.field(
        default=("F16", "Q4_K_M"), converter=_tuple_upper, validator=_subset(GGUF_TYPES)
    )
    """GGUF files to write; K-quants come from llama.cpp's quantizer."""
    merge_strategy: Literal["auto", "original", "nf4-roundtrip"] = attrs.field(
        default="auto", validator=one_of("auto", "original", "nf4-roundtrip")
    )
    """Base the adapter is merged into: the original 16-bit weights, dequant(NF4(W)) (what the
    adapter saw in training), or ``auto``: whichever measures closer to the trained model."""
    merged_dtype: Literal["float16", "bfloat16", "float32"] = attrs.field(
        default="float16", validator=one_of("float16", "bfloat16", "float32")
    )
    """dtype of the merged safetensors (F16 GGUF is then an exact copy of it)."""
    parity: bool = True
    """Measure every artefact against the trained model (on by default)."""
    strict: bool = True
    """A failed parity threshold raises ExportError; ``False`` turns it into a warning."""
    min_agreement: dict[str, float] = attrs.field(factory=dict)
    """Per-type overrides of :data:`DEFAULT_MIN_AGREEMENT`."""
    tie_tolerance: float = attrs.field(
        default=DEFAULT_TIE_TOLERANCE, converter=float, validator=in_range(0, 1)
    )
    """Reference log-probability gap (nats) under which a different top-1 token is a tie, not
    a disagreement; 0 enforces the thresholds on raw top-1 agreement."""
    max_merge_kl: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=attrs.validators.optional(in_range(0, 10)),
    )
    """Largest mean KL(trained || merged) over probe positions before the merge fails;
    ``None``: the chosen strategy's entry in :data:`DEFAULT_MAX_MERGE_KL`."""
    base_model_id: str | None = None
    """Hub id recorded as the adapter's base (default: the local path trained on)."""
    license: str = "apache-2.0"
    """License written to the model card."""
    name: str | None = None
    """Model name for the card and GGUF metadata (default: the export directory's name)."""

    def __attrs_post_init__(self) -> None:
        if "gguf" in self.formats and not self.gguf_types:
            raise ConfigError(
                "gguf_types is empty while formats has 'gguf'; add e.g. 'F16'.", field="gguf_types"
            )
        bad = [k for k in self.min_agreement if k.upper() not in GGUF_TYPES]
        if bad:
            raise ConfigError(
                f"min_agreement names unknown GGUF types {bad}.", field="min_agreement"
            )

    def merge_kl_limit(self, strategy: str) -> float:
        """Largest mean KL accepted for a merge made by ``strategy``."""
        if self.max_merge_kl is not None:
            return self.max_merge_kl
        return DEFAULT_MAX_MERGE_KL[strategy]

    def threshold(self, gguf_type: str) -> float:
        """Minimum tie-aware top-1 agreement (``top1_within_tie``) for ``gguf_type``."""
        overrides = {k.upper(): v for k, v in self.min_agreement.items()}
        return overrides.get(gguf_type, DEFAULT_MIN_AGREEMENT.get(gguf_type, 0.0))
