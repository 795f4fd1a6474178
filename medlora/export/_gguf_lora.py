"""A peft LoRA adapter -> GGUF adapter file that llama.cpp applies on top of a base GGUF.

The file follows llama.cpp's own ``convert_lora_to_gguf.py`` layout: ``general.type =
adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and, for every adapted weight
``blk.N.attn_q.weight``, the pair ``blk.N.attn_q.weight.lora_a`` (peft's lora_A, shape
``(r, in)``) and ``blk.N.attn_q.weight.lora_b`` (lora_B, ``(out, r)``). llama.cpp scales each
pair by ``alpha / r`` with ``r`` read from the tensor, as peft does without rsLoRA.

The base GGUF's Q and K rows are permuted from HF's rotate-half layout to llama.cpp's pairwise
layout, so ``delta = B @ A`` must be permuted the same way: that is a permutation of B's rows
only (FACTS: never lora_A).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medlora._errors import ExportError
from medlora._io import atomic_path
from medlora._optional import require
from medlora._safetensors import open_lazily
from medlora.export._gguf import _check_metadata, _read_llama_config, add_metadata

__all__ = ["write_lora_gguf"]

_PREFIX = "base_model.model."
_LORA_TYPES = ("F32", "F16")


def write_lora_gguf(
    adapter_dir: Path,
    out_path: Path,
    *,
    base_model_dir: Path,
    outtype: str = "F32",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert a peft LoRA adapter directory to a llama.cpp GGUF adapter.

    Args:
        adapter_dir: Directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
        out_path: The ``.gguf`` file to write (replaced only once complete).
        base_model_dir: The Hugging Face base model (only its ``config.json`` is read, for the
            head counts of the Q/K permutation and the layer count).
        outtype: ``F32`` (default; LoRA tensors are small) or ``F16``.
        metadata: Extra ``general.*`` / ``medlora.*`` string keys, as for
            :func:`~medlora.export.write_gguf`.

    Returns:
        ``out_path``; load it with ``open_gguf(base_gguf, lora_path=out_path)``.

    Raises:
        ExportError: The adapter uses something llama.cpp cannot apply (DoRA,
            ``modules_to_save``, a non-LoRA peft type) or a weight llama.cpp has no name for.
    """
    gguf = require("gguf", "GGUF export")
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    qtype = outtype.upper()
    if qtype not in _LORA_TYPES:
        raise ExportError(f"write_lora_gguf writes {' or '.join(_LORA_TYPES)}, not {outtype!r}")
    lora = _read_adapter_config(adapter_dir)
    config = _read_llama_config(Path(base_model_dir))
    extra = _check_metadata(metadata or {})
    pairs = _read_pairs(adapter_dir)
    raw = gguf.GGMLQuantizationType[qtype]
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        try:
            _add_header(writer, float(lora["lora_alpha"]), extra, f"{adapter_dir.name} LoRA")
            for name, a, b in _llama_cpp_pairs(pairs, lora, config, adapter_dir):
                for suffix, data in (("lora_a", a), ("lora_b", b)):
                    writer.add_tensor(
                        f"{name}.{suffix}", gguf.quants.quantize(data, raw), raw_dtype=raw
                    )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.flush()
        finally:
            writer.close()
    return out_path


def _read_pairs(adapter_dir: Path) -> dict[str, dict[str, Any]]:
    """Adapted module -> ``{"a": lora_A, "b": lora_B}`` in float32, modules sorted by name."""
    torch = require("torch", "GGUF export")
    pairs: dict[str, dict[str, Any]] = {}
    with open_lazily(adapter_dir / "adapter_model.safetensors") as handle:
        for key in sorted(handle.keys()):
            part = "a" if ".lora_A." in key else "b" if ".lora_B." in key else None
            if part is None:
                raise ExportError(
                    f"{adapter_dir}: tensor {key!r} is not a LoRA A/B weight; llama.cpp adapters "
                    "hold only lora_A/lora_B (merge the adapter instead)"
                )
            module = key.removeprefix(_PREFIX).replace(f".lora_{part.upper()}.weight", "")
            pairs.setdefault(module, {})[part] = handle.get_tensor(key).to(torch.float32)
    return pairs


def _add_header(writer: Any, alpha: float, extra: dict[str, str], default_name: str) -> None:
    """The adapter's keys: type, LoRA alpha, name, base model and the extra metadata."""
    gguf = require("gguf", "GGUF export")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(extra.pop("general.name", default_name))
    add_metadata(writer, extra)


def _llama_cpp_pairs(
    pairs: dict[str, dict[str, Any]],
    lora: Mapping[str, Any],
    config: Mapping[str, Any],
    adapter_dir: Path,
) -> Iterator[tuple[str, Any, Any]]:
    """Per adapted module: its llama.cpp weight name, lora_A ``(r, in)`` and lora_B
    ``(out, r)`` as numpy arrays, B scaled to peft's scale and its Q/K rows permuted."""
    gguf = require("gguf", "GGUF export")
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    alpha = float(lora["lora_alpha"])
    for module, pair in pairs.items():
        if set(pair) != {"a", "b"}:
            raise ExportError(f"{adapter_dir}: {module} lacks lora_A or lora_B")
        name = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise ExportError(f"{adapter_dir}: adapted module {module!r} has no llama.cpp name")
        a, b = pair["a"].numpy(), pair["b"].numpy()  # (r, in), (out, r)
        b = b * _scale_fix(lora, module, alpha, a.shape[0])
        heads = n_head if module.endswith("q_proj") else n_kv if module.endswith("k_proj") else 0
        if heads:  # permute the output rows of B @ A, i.e. B's rows only
            b = b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1])
            b = b.swapaxes(1, 2).reshape(pair["b"].shape)
        yield name, a, b


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file() or not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ExportError(
            f"{adapter_dir} is not a peft adapter directory (needs adapter_config.json and "
            "adapter_model.safetensors)"
        )
    lora: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    if lora.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {lora.get('peft_type')!r} (only LORA)")
    if lora.get("use_dora"):
        problems.append("use_dora (DoRA's magnitude vector)")
    if lora.get("modules_to_save"):
        problems.append(f"modules_to_save {lora['modules_to_save']}")
    if problems:
        raise ExportError(
            f"{path}: llama.cpp cannot apply this adapter: {'; '.join(problems)}; export the "
            "merged model instead"
        )
    return lora


def _scale_fix(lora: Mapping[str, Any], module: str, alpha: float, rank: int) -> float:
    """Factor that turns llama.cpp's ``alpha / r`` into peft's scale for ``module``.

    1.0 for a plain adapter; rsLoRA (``alpha / sqrt(r)``) and per-module ``alpha_pattern``
    entries are folded into lora_B.
    """
    module_alpha = alpha
    for pattern, value in (lora.get("alpha_pattern") or {}).items():
        if module.endswith(pattern) or pattern in module:
            module_alpha = float(value)
    wanted = module_alpha / (math.sqrt(rank) if lora.get("use_rslora") else rank)
    return wanted / (alpha / rank)
