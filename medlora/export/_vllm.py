"""What vLLM needs from an adapter or merged directory, checked without vLLM installed.

vLLM (FACTS: a CUDA-only wheel) serves a merged directory with ``vllm serve DIR`` and a peft
adapter with ``--enable-lora --lora-modules name=DIR``. Both fail late, on a GPU box, when a
file is missing; these checks fail the export early instead. Each returns the list of problems
found (empty when the directory is servable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VLLM_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
"""Llama modules vLLM's LoRA kernels apply adapters to (it packs qkv and gate/up itself)."""
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_MERGED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
)


def _json(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{path.name} is missing")
        return {}
    except ValueError as exc:
        problems.append(f"{path.name} is not valid JSON ({exc})")
        return {}
    return data


def _pickles(directory: Path) -> list[str]:
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.suffix in _PICKLE_SUFFIXES
    )


def adapter_problems(adapter_dir: Path) -> list[str]:
    """Why vLLM's ``--enable-lora`` would refuse ``adapter_dir`` (empty list: it would not)."""
    adapter_dir = Path(adapter_dir)
    problems: list[str] = []
    config = _json(adapter_dir / "adapter_config.json", problems)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        problems.append("adapter_model.safetensors is missing")
    if pickles := _pickles(adapter_dir):
        problems.append(f"pickle files {pickles} (vLLM loads safetensors only)")
    if not config:
        return problems
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (vllm#9280)")
    if config.get("use_dora"):
        problems.append("use_dora (vLLM has no DoRA kernels)")
    if unsupported := sorted(_adapted_modules(adapter_dir, config) - VLLM_LORA_MODULES):
        problems.append(f"adapted modules {unsupported} are not LoRA-servable in vLLM")
    if not config.get("base_model_name_or_path"):
        problems.append("base_model_name_or_path is empty")
    return problems


def _adapted_modules(adapter_dir: Path, config: dict[str, Any]) -> set[str]:
    """Short names (``q_proj``) of the adapted modules, as vLLM matches them: from the
    weights when present (what vLLM reads), else from ``target_modules`` (names or paths)."""
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as handle:
            keys = list(handle.keys())
        return {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys if ".lora_" in k}
    targets = config.get("target_modules") or []
    names = [targets] if isinstance(targets, str) else targets
    return {str(t).rsplit(".", 1)[-1] for t in names}


def merged_problems(merged_dir: Path) -> list[str]:
    """Why ``vllm serve merged_dir`` would fail or serve a different model (empty: it would not)."""
    merged_dir = Path(merged_dir)
    problems = [f"{name} is missing" for name in _MERGED_FILES if not (merged_dir / name).is_file()]
    config = _json(merged_dir / "config.json", [])
    if not config.get("architectures"):
        problems.append("config.json has no 'architectures'")
    if config.get("dtype", config.get("torch_dtype")) not in ("float16", "bfloat16", "float32"):
        problems.append("config.json has no 16/32-bit 'dtype'")
    if config.get("quantization_config"):
        problems.append("config.json still carries a quantization_config (4-bit leftovers)")
    shards = sorted(p.name for p in merged_dir.glob("*.safetensors"))
    index = merged_dir / "model.safetensors.index.json"
    if not shards:
        problems.append("no *.safetensors weights")
    elif len(shards) > 1 or index.is_file():
        weight_map = _json(index, problems).get("weight_map", {})
        if sorted(set(weight_map.values())) != shards:
            problems.append("model.safetensors.index.json does not list exactly the shards present")
    generation = _json(merged_dir / "generation_config.json", [])
    if generation.get("eos_token_id") is None:
        problems.append("generation_config.json has no eos_token_id (generation never stops)")
    template = (merged_dir / "chat_template.jinja").is_file() or "chat_template" in _json(
        merged_dir / "tokenizer_config.json", []
    )
    if not template:
        problems.append("no chat template (chat_template.jinja or tokenizer_config.json)")
    if pickles := _pickles(merged_dir):
        problems.append(f"pickle files {pickles}")
    return problems
