"""Merge a LoRA adapter into the base one tensor at a time, straight into 16-bit safetensors.

The in-memory path (``peft`` ``merge_and_unload`` on a float32 model, then ``save_pretrained``)
holds two float32 copies of the weights at its peak: 3.2x the F16 size on a 1.1B model. Here
the base is read tensor by tensor with plain file reads (a memory map would keep every page
read resident), each LoRA-targeted weight becomes

    W' = base(W) + scaling * (B @ A)        # float32, one matrix at a time

with base(W) = W (``original``) or dequant(NF4(W)) (``nf4-roundtrip``, the same bitsandbytes
calls as :func:`medlora.export._merge.nf4_roundtrip`), and is streamed into the output file
whose header was written first. Peak memory: one tensor in float32 and its delta.

The output is laid out like ``save_pretrained(..., safe_serialization=True,
max_shard_size="2GB")``: same tensor names and shard split, ``model.safetensors.index.json``
when sharded, ``config.json`` with the dtype. Plain LoRA only (``lora_A``/``lora_B`` on linear
layers, optional rsLoRA, rank patterns); :func:`unsupported_features` names what is not
(DoRA, ``modules_to_save``, ...) so the caller can use the peft path instead.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from medlora._errors import ExportError
from medlora._io import write_json
from medlora._optional import require
from medlora._safetensors import read_header, stored_tensors, write_safetensors
from medlora.training import QuantizationConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MAX_SHARD_SIZE = "2GB"
_PREFIX = "base_model.model."
_UNSUPPORTED_FLAGS = ("use_dora", "lora_bias")
_UNSUPPORTED_LISTS = ("modules_to_save", "alpha_pattern", "target_parameters")


def unsupported_features(adapter_dir: Path) -> list[str]:
    """What in this adapter the streaming merge does not handle (empty: it handles all).

    Each entry names the file and the config field or tensor key.
    """
    config_path = adapter_dir / ADAPTER_CONFIG
    config = _read_adapter_config(config_path)
    found = []
    if config.get("peft_type", "LORA") != "LORA":
        found.append(f"{config_path}: peft_type {config.get('peft_type')!r} (not LORA)")
    found += [f"{config_path}: {key}=true" for key in _UNSUPPORTED_FLAGS if config.get(key)]
    found += [f"{config_path}: {key} is set" for key in _UNSUPPORTED_LISTS if config.get(key)]
    if config.get("trainable_token_indices"):
        found.append(f"{config_path}: trainable_token_indices is set")
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        found.append(f"{weights}: missing (only safetensors adapters are streamed)")
        return found
    for key in read_header(weights):
        if _split_key(key) is None:
            found.append(f"{weights}: tensor {key!r} is not a lora_A/lora_B weight")
    return found


@attrs.frozen(kw_only=True)
class _LoraPair:
    a: Any
    """(rank, in) lora_A weight."""
    b: Any
    """(out, rank) lora_B weight."""
    scaling: float
    """lora_alpha / rank (rsLoRA: / sqrt(rank))."""


def read_lora(adapter_dir: Path) -> tuple[dict[str, _LoraPair], bool]:
    """The adapter's LoRA pairs keyed by the base weight they change, and ``fan_in_fan_out``.

    Raises:
        ExportError: the adapter uses a feature this merge does not handle, or a lora_A has
            no lora_B (the message names the file and the key).
    """
    problems = unsupported_features(adapter_dir)
    if problems:
        raise ExportError(
            "the streaming merge handles plain LoRA adapters only: " + "; ".join(problems)
        )
    config = _read_adapter_config(adapter_dir / ADAPTER_CONFIG)
    safetensors_torch = require("safetensors.torch", "merged export")
    weights = adapter_dir / ADAPTER_WEIGHTS
    tensors: dict[str, Any] = safetensors_torch.load_file(str(weights))
    halves: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        split = _split_key(key)
        assert split is not None  # unsupported_features checked every key
        halves.setdefault(split[0], {})[split[1]] = tensor
    try:
        alpha = float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{adapter_dir / ADAPTER_CONFIG}: no numeric lora_alpha") from exc
    pairs = {}
    for target, half in halves.items():
        if set(half) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(half)).pop()
            raise ExportError(f"{weights}: {_PREFIX}{target} has no {missing}.weight tensor")
        rank = int(half["lora_A"].shape[0])
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        pairs[f"{target}.weight"] = _LoraPair(a=half["lora_A"], b=half["lora_B"], scaling=scale)
    return pairs, bool(config.get("fan_in_fan_out"))


def stream_merge(
    base_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    strategy: str,
    quant: QuantizationConfig | None,
    dtype: str = "float16",
    max_shard_size: str = MAX_SHARD_SIZE,
) -> Path:
    """Write the merged model's weights and ``config.json`` to ``out_dir`` in ``dtype``.

    Args:
        base_dir: The base model directory (safetensors, one file or sharded).
        adapter_dir: A peft LoRA adapter directory.
        out_dir: Where the weights go (created; tokenizer files are the caller's).
        strategy: ``original`` (merge into W) or ``nf4-roundtrip`` (into dequant(NF4(W))).
        quant: The quantization training used (``nf4-roundtrip`` only; default NF4 settings).
        dtype: ``float16``, ``bfloat16`` or ``float32``.
        max_shard_size: Largest safetensors file, as ``save_pretrained`` takes it.

    Raises:
        ExportError: unsupported adapter (see :func:`unsupported_features`), or an adapter
            key whose weight the base does not have.
    """
    torch = require("torch", "merged export")
    if strategy not in ("original", "nf4-roundtrip"):
        raise ExportError(f"unknown merge strategy {strategy!r}")
    pairs, fan_in_fan_out = read_lora(adapter_dir)
    config, linear = _skeleton(base_dir)
    roundtrip = (
        _nf4_roundtrip(quant or QuantizationConfig()) if strategy == "nf4-roundtrip" else None
    )
    out_dtype = getattr(torch, dtype)
    with stored_tensors(base_dir) as stored:
        for key in pairs:
            if key not in stored or key not in linear:
                raise ExportError(
                    f"{adapter_dir / ADAPTER_WEIGHTS}: {_PREFIX}{key[: -len('.weight')]} "
                    f"targets {key!r}, which is not a linear weight of the base in {base_dir}"
                )
        names = sorted(stored)  # save_pretrained's order for a model loaded from files
        if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in pairs:
            names = [n for n in names if n != "lm_head.weight"]

        def merged(name: str) -> Any:
            weight = torch.from_numpy(stored[name].read_f32())
            if roundtrip is not None and name in linear and not name.endswith("lm_head.weight"):
                weight = roundtrip(weight)
            pair = pairs.get(name)
            if pair is not None:
                delta = pair.b.float() @ pair.a.float()
                weight += (delta.T if fan_in_fan_out else delta) * pair.scaling
            return weight.to(out_dtype)

        out_dir.mkdir(parents=True, exist_ok=True)
        write_sharded(
            out_dir,
            {n: stored[n].shape for n in names},
            merged,
            dtype=dtype,
            max_shard_size=max_shard_size,
        )
    config.dtype = dtype
    config.architectures = config.architectures or ["LlamaForCausalLM"]
    config.save_pretrained(out_dir)
    return out_dir


def write_sharded(
    out_dir: Path,
    shapes: dict[str, tuple[int, ...]],
    produce: Callable[[str], Any],
    *,
    dtype: str,
    max_shard_size: str = MAX_SHARD_SIZE,
) -> list[Path]:
    """Write tensors named in ``shapes`` (in that order) as ``save_pretrained`` shards them.

    ``produce(name)`` is called once per tensor, when its bytes are due; no more than one
    tensor is held at a time. Returns the files written.
    """
    hub = require("huggingface_hub", "merged export")
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4}[dtype]
    sizes = {name: itemsize * math.prod(shape) for name, shape in shapes.items()}
    split = hub.split_state_dict_into_shards_factory(
        sizes,
        get_storage_size=lambda size: size,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    written = []
    for filename, names in split.filename_to_tensors.items():
        path = out_dir / filename
        write_safetensors(path, {n: shapes[n] for n in names}, produce, dtype=dtype)
        written.append(path)
    if split.is_sharded:
        parameters = sum(math.prod(shape) for shape in shapes.values())
        write_json(
            out_dir / "model.safetensors.index.json",
            {
                "metadata": {"total_parameters": parameters, **split.metadata},
                "weight_map": dict(sorted(split.tensor_to_filename.items())),
            },
        )
    return written


def _split_key(key: str) -> tuple[str, str] | None:
    """``base_model.model.X.lora_A.weight`` -> (``X``, ``lora_A``); anything else -> None."""
    for half in ("lora_A", "lora_B"):
        suffix = f".{half}.weight"
        if key.startswith(_PREFIX) and key.endswith(suffix):
            target = key[len(_PREFIX) : -len(suffix)]
            if target:
                return target, half
    return None


def _read_adapter_config(path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} is not a readable adapter config: {exc}") from exc
    return config


def _skeleton(base_dir: Path) -> tuple[Any, set[str]]:
    """The base's config and the weight names of its nn.Linear layers (the model is built on
    the meta device: no memory)."""
    torch = require("torch", "merged export")
    transformers = require("transformers", "merged export")
    config = transformers.AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    linear = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return config, linear


def _nf4_roundtrip(quant: QuantizationConfig) -> Callable[[Any], Any]:
    """dequant(quant(W)) for one float32 weight, as 4-bit loading stores it."""
    from medlora.export._merge import nf4_roundtrip

    return functools.partial(nf4_roundtrip, quant=quant)
