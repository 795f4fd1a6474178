"""Frozen, validated export settings."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from medlora._config import ConfigBase, in_range, integer, one_of, positive
from medlora._deprecated import accepts_old_keywords, warn_deprecated, warn_old_attribute
from medlora._errors import ConfigError
from medlora.export._gguf import GGUF_LLAMA_CPP_TYPES, GGUF_NUMPY_TYPES
from medlora.export._imatrix import IMATRIX_TYPES
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
"""Top-1 floors (tie-aware, on the probe prompts) that earlier versions enforced by default.

They were set on 2-layer toy models, where top-1 is stable; on a real model near-ties flip
top-1 under any rounding, so top-1 is now reported, not gated, and the gates are
:data:`DEFAULT_MAX_PPL_RATIO` and :data:`DEFAULT_MAX_REPLY_KL`. A type named in
``ExportConfig.min_agreement`` is still held to its floor there;
``min_agreement=DEFAULT_MIN_AGREEMENT`` restores the old gates."""

DEFAULT_MAX_PPL_RATIO = {
    "F32": 1.005,
    "F16": 1.005,
    "BF16": 1.01,
    "Q8_0": 1.02,
    "Q6_K": 1.05,
    "Q5_K_M": 1.2,
    "Q4_K_M": 1.2,
    "Q4_0": 1.3,
    "Q3_K_M": 1.4,
    "Q2_K": 2.0,
}
"""Largest perplexity ratio (GGUF / merged model) of the reply tokens of held-out
conversations, per GGUF type: the default export gate. See ``docs/benchmarks.md``, "GGUF
fidelity on SmolLM2-135M-Instruct", for the figures they were set from: F16 1.0001, Q8_0
1.005, Q5_K_M 1.09-1.11 and Q4_K_M 1.12-1.13 without an importance matrix (1.077 with one);
each gate leaves room over its type's figure without a matrix, so ``imatrix=False`` exports
pass, while a broken file (a wrong RoPE, a shuffled vocabulary) lands far above."""

DEFAULT_MAX_REPLY_KL = {
    "F32": 0.002,
    "F16": 0.002,
    "BF16": 0.01,
    "Q8_0": 0.01,
    "Q6_K": 0.03,
    "Q5_K_M": 0.15,
    "Q4_K_M": 0.15,
    "Q4_0": 0.2,
    "Q3_K_M": 0.3,
    "Q2_K": 1.0,
}
"""Largest mean KL(merged || GGUF) per reply position, in nats, per GGUF type: the second
default export gate (measured on SmolLM2-135M-Instruct: Q8_0 0.005, Q5_K_M 0.09-0.095 and
Q4_K_M 0.076 without an importance matrix, Q4_K_M 0.044 with one). It also catches a file
that changes the distribution without moving the perplexity of the actual tokens."""


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


def _per_type(name: str, low: float, high: float):  # type: ignore[no-untyped-def]
    """Validator of a ``{GGUF type: number}`` mapping: known types, numbers in range."""

    def check(_inst: object, _attribute: attrs.Attribute[Any], value: dict[str, Any]) -> None:
        problems = []
        for key, number in value.items():
            if str(key).upper() not in GGUF_TYPES:
                close = difflib.get_close_matches(str(key).upper(), GGUF_TYPES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown GGUF type {key!r}{hint}")
            elif isinstance(number, bool) or not isinstance(number, int | float):
                problems.append(f"{key}: {number!r} is not a number")
            elif not low <= number <= high:
                problems.append(f"{key}: {number} lies outside [{low:g}, {high:g}]")
        if problems:
            example = {"min_agreement": "0.95", "max_ppl_ratio": "1.10"}.get(name, "0.05")
            raise ConfigError(
                f"{name}: {'; '.join(problems)}. Give GGUF types from {', '.join(GGUF_TYPES)} "
                f"with numbers in [{low:g}, {high:g}], e.g. {{'Q4_K_M': {example}}}.",
                field=name,
            )

    return check


def _imatrix_mode(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(
            f"imatrix = {value!r} is invalid: set it to true, false or 'auto'.",
            field=attribute.name,
        )


ON_FAILURE = ("raise", "warn", "ignore")
OnFailure = Literal["raise", "warn", "ignore"]


def _old_check_flags(keywords: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The earlier booleans ``parity``/``strict`` onto ``on_failure``."""
    out = dict(keywords)
    if "parity" not in out and "strict" not in out:
        return out
    if "on_failure" in out:
        raise ConfigError(
            f"{where}parity/strict and on_failure are the same setting; give only on_failure.",
            field="on_failure",
        )
    parity, strict = bool(out.pop("parity", True)), bool(out.pop("strict", True))
    out["on_failure"] = "ignore" if not parity else "raise" if strict else "warn"
    warn_deprecated(
        f"{where}parity and strict are deprecated and will be removed in the next release; "
        f"use on_failure={out['on_failure']!r} instead."
    )
    return out


@accepts_old_keywords(_old_check_flags)
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
    on_failure: OnFailure = attrs.field(default="raise", validator=one_of(*ON_FAILURE))
    """What a failed export check does. Every artefact is measured against the trained model
    either way (the figures go to ``parity.json`` and the model card); a failed gate then
    ``"raise"``: raises :class:`~medlora.ExportError` and writes nothing; ``"warn"``: keeps
    the export and warns; ``"ignore"``: keeps the export silently (the failures are still in
    ``parity.json``). Replaces the booleans ``parity`` and ``strict`` (``strict=False`` is
    ``"warn"``, ``parity=False`` is ``"ignore"``), which still work, with a
    :class:`DeprecationWarning`, until the next release."""
    min_agreement: dict[str, float] = attrs.field(
        factory=dict, converter=dict, validator=_per_type("min_agreement", 0.0, 1.0)
    )
    """Top-1 floors (tie-aware ``top1_within_tie`` on the probes) to enforce per GGUF type,
    e.g. ``{"Q4_K_M": 0.95}``; types not named are reported, not gated (see
    :data:`DEFAULT_MIN_AGREEMENT`)."""
    max_ppl_ratio: dict[str, float] = attrs.field(
        factory=dict, converter=dict, validator=_per_type("max_ppl_ratio", 1.0, 100.0)
    )
    """Per-type overrides of :data:`DEFAULT_MAX_PPL_RATIO` (held-out reply perplexity of the
    GGUF over the merged model's)."""
    max_reply_kl: dict[str, float] = attrs.field(
        factory=dict, converter=dict, validator=_per_type("max_reply_kl", 0.0, 100.0)
    )
    """Per-type overrides of :data:`DEFAULT_MAX_REPLY_KL` (mean KL per held-out reply
    position, nats)."""
    fidelity_positions: int = attrs.field(default=1024, validator=[integer, positive])
    """Held-out reply positions every artefact is scored on (more: steadier figures, slower
    export; 1,024 measures a perplexity ratio to about +-0.01)."""
    imatrix: bool | Literal["auto"] = attrs.field(default="auto", validator=_imatrix_mode)
    """Quantize llama.cpp's K-quants (Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K) with an importance
    matrix collected from the merged model on the run's training records (llama.cpp's imatrix):
    ``"auto"`` whenever ``gguf_types`` has one, ``True`` the same but an error without one,
    ``False`` never (plain llama.cpp quantization)."""
    imatrix_tokens: int = attrs.field(default=8192, validator=[integer, positive])
    """Tokens of training text the importance matrix is collected over."""
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
    threads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.and_(integer, positive))
    )
    """CPU threads for the export's work in torch (merging, measuring) and llama.cpp
    (quantizing, fidelity and generation checks); ``None``: each library's default (all
    cores). Set it to the cores that are actually free: on a shared machine, llama.cpp's
    threads that wait for a busy core spin and burn time (scoring 842 probe tokens on a
    135M-parameter F16 GGUF beside a running test suite took 38.9 CPU-s with the defaults and
    5.3 with one thread). Torch's thread count is restored when the export ends."""
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
        if self.imatrix is True and not self.imatrix_types:
            raise ConfigError(
                f"imatrix=True but gguf_types {list(self.gguf_types)} has no llama.cpp K-quant "
                f"({', '.join(IMATRIX_TYPES)}) to use it; add one (e.g. 'Q4_K_M') or set "
                "imatrix='auto'.",
                field="imatrix",
            )

    @property
    def parity(self) -> bool:
        """Deprecated: ``on_failure != "ignore"``."""
        warn_old_attribute("ExportConfig.parity", "ExportConfig.on_failure")
        return self.on_failure != "ignore"

    @property
    def strict(self) -> bool:
        """Deprecated: ``on_failure == "raise"``."""
        warn_old_attribute("ExportConfig.strict", "ExportConfig.on_failure")
        return self.on_failure == "raise"

    def merge_kl_limit(self, strategy: str) -> float:
        """Largest mean KL accepted for a merge made by ``strategy``."""
        if self.max_merge_kl is not None:
            return self.max_merge_kl
        return DEFAULT_MAX_MERGE_KL[strategy]

    def threshold(self, gguf_type: str) -> float:
        """Minimum tie-aware top-1 agreement (``top1_within_tie``) enforced for ``gguf_type``:
        its ``min_agreement`` entry, else 0 (reported, not gated)."""
        overrides = {k.upper(): v for k, v in self.min_agreement.items()}
        return overrides.get(gguf_type.upper(), 0.0)

    def ppl_ratio_limit(self, gguf_type: str) -> float:
        """Largest held-out reply perplexity ratio (GGUF / merged) accepted for ``gguf_type``."""
        overrides = {k.upper(): v for k, v in self.max_ppl_ratio.items()}
        return overrides.get(gguf_type.upper(), DEFAULT_MAX_PPL_RATIO.get(gguf_type.upper(), 2.0))

    def reply_kl_limit(self, gguf_type: str) -> float:
        """Largest mean KL per held-out reply position accepted for ``gguf_type``."""
        overrides = {k.upper(): v for k, v in self.max_reply_kl.items()}
        return overrides.get(gguf_type.upper(), DEFAULT_MAX_REPLY_KL.get(gguf_type.upper(), 1.0))

    @property
    def imatrix_types(self) -> tuple[str, ...]:
        """The ``gguf_types`` an importance matrix is used for (none when ``imatrix=False``)."""
        if self.imatrix is False or "gguf" not in self.formats:
            return ()
        return tuple(t for t in self.gguf_types if t in IMATRIX_TYPES)
