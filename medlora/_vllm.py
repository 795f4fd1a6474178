"""vLLM, in one place: what it needs from an adapter or merged directory (checked without vLLM
installed) and the exact ``vllm serve`` command for one.

vLLM (a CUDA-only wheel) serves a merged directory with ``vllm serve DIR`` and a peft adapter
with ``--enable-lora --lora-modules name=DIR``. Both fail late, on a GPU box, when something is
missing; the exporter runs these checks on every export and ``medlora serve`` before it
starts vLLM. Each check returns the problems found (an empty list when the directory is
servable).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import struct
from pathlib import Path
from typing import Any

from medlora._errors import ModelLoadError
from medlora._hub import adapter_base
from medlora._optional import require
from medlora._safetensors import DTYPES, tensor_dtypes

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
"""Architectures medlora produces and vLLM serves natively."""

VLLM_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
"""Llama modules vLLM's LoRA kernels apply adapters to (it packs qkv and gate/up itself)."""

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``--max-lora-rank``."""

_TOKENIZERS = ("tokenizer.json", "tokenizer.model")
"""Either serves: vLLM loads ``tokenizer.json`` (byte-level BPE models ship only that) or
converts a SentencePiece ``tokenizer.model``."""


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name} is not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} must hold a JSON object")
        return None
    return data


def _check_weights(directory: Path, stem: str, problems: list[str]) -> dict[str, str]:
    """Safetensors only, every shard present; returns tensor -> dtype."""
    pickles = [
        p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
    ]
    if pickles:
        problems.append(
            f"pickle weights present ({', '.join(sorted(pickles))}); keep safetensors only"
        )
    files = sorted(directory.glob(f"{stem}*.safetensors"))
    if not files:
        problems.append(f"no {stem}*.safetensors weights")
        return {}
    index = directory / f"{stem}.safetensors.index.json"
    if len(files) > 1 or index.is_file():
        data = _read_json(index, problems) or {}
        wanted = set((data.get("weight_map") or {}).values())
        missing = sorted(w for w in wanted if not (directory / w).is_file())
        if missing:
            problems.append(f"shards named in {index.name} are missing: {', '.join(missing)}")
    dtypes: dict[str, str] = {}
    for file in files:
        try:
            dtypes.update(tensor_dtypes(file))
        except (OSError, ValueError, struct.error) as exc:
            problems.append(f"{file.name} is not a readable safetensors file ({exc})")
    return dtypes


def _check_merged(directory: Path, problems: list[str]) -> None:
    config = _read_json(directory / "config.json", problems) or {}
    arch = config.get("architectures")
    if not isinstance(arch, list) or len(arch) != 1 or arch[0] not in SUPPORTED_ARCHITECTURES:
        problems.append(
            f"config.json architectures = {arch!r}; vLLM needs one of {SUPPORTED_ARCHITECTURES}"
        )
    if config.get("quantization_config"):
        problems.append("config.json still carries a quantization_config (4-bit leftovers)")
    dtype = config.get("dtype", config.get("torch_dtype"))
    if dtype not in DTYPES:
        problems.append(f"config.json dtype = {dtype!r}; use one of {', '.join(DTYPES)}")
    dtypes = _check_weights(directory, "model", problems)
    if dtypes and dtype in DTYPES:
        odd = sorted({d for d in dtypes.values() if d != DTYPES[dtype]})
        if odd:
            problems.append(f"weights hold {', '.join(odd)} tensors but config.json says {dtype}")
    if not (directory / "tokenizer_config.json").is_file():
        problems.append("tokenizer file tokenizer_config.json is missing")
    if not any((directory / name).is_file() for name in _TOKENIZERS):
        problems.append(
            "no tokenizer: tokenizer.json (or a SentencePiece tokenizer.model) is missing"
        )
    tok = _read_json(directory / "tokenizer_config.json", []) or {}
    has_template = (directory / "chat_template.jinja").is_file() or bool(tok.get("chat_template"))
    if not has_template:
        problems.append("no chat template (chat_template.jinja): /v1/chat/completions would fail")
    gen = _read_json(directory / "generation_config.json", problems)
    if gen is not None and gen.get("eos_token_id") is None:
        problems.append("generation_config.json has no eos_token_id: generation would not stop")


def _check_adapter(directory: Path, problems: list[str]) -> None:
    config = _read_json(directory / "adapter_config.json", problems) or {}
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type = {config.get('peft_type')!r}; vLLM serves LORA adapters only")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']!r}: vLLM rejects these adapters "
            "(vllm#9280): serve the merged directory instead"
        )
    if config.get("use_dora"):
        problems.append("use_dora = true; vLLM cannot serve DoRA adapters: serve the merged model")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        problems.append(f"target_modules = {targets!r}; vLLM needs an explicit list of modules")
    else:
        # vLLM matches modules by their last name part (``model.layers.0.mlp.up_proj`` ok)
        odd = sorted({str(t) for t in targets if str(t).split(".")[-1] not in VLLM_LORA_MODULES})
        if odd:
            problems.append(f"target_modules {odd} are not supported by vLLM's LoRA for Llama")
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= VLLM_LORA_RANKS[-1]:
        problems.append(f"r = {rank!r}; vLLM supports ranks 1..{VLLM_LORA_RANKS[-1]}")
    if not config.get("base_model_name_or_path"):
        problems.append("adapter_config.json names no base_model_name_or_path")
    tensors = _check_weights(directory, "adapter_model", problems)
    extra = sorted(t for t in tensors if "lora_A" not in t and "lora_B" not in t)
    extra += sorted(
        t
        for t in tensors
        if ".lora_" in t and t.split(".lora_")[0].split(".")[-1] not in VLLM_LORA_MODULES
    )
    if extra:
        problems.append(f"non-LoRA tensors in the adapter: {', '.join(extra[:3])}")


def adapter_problems(adapter_dir: str | Path) -> list[str]:
    """Why vLLM's ``--enable-lora`` would refuse ``adapter_dir`` (empty list: it would not)."""
    problems: list[str] = []
    _check_adapter(Path(adapter_dir), problems)
    return problems


def merged_problems(merged_dir: str | Path) -> list[str]:
    """Why ``vllm serve merged_dir`` would fail or serve another model (empty: it would not)."""
    problems: list[str] = []
    _check_merged(Path(merged_dir), problems)
    return problems


def check_vllm_contract(path: str | Path) -> list[str]:
    """What would stop vLLM from serving ``path``; an empty list means nothing.

    A merged directory needs a supported architecture, safetensors weights only (all shards
    present) in the dtype ``config.json`` names, ``tokenizer_config.json`` with
    ``tokenizer.json`` or ``tokenizer.model``, a chat template and a
    ``generation_config.json`` with EOS. An adapter needs a LoRA ``adapter_config.json`` with
    an explicit list of supported target modules, no ``modules_to_save``, no DoRA, a base
    model, and ``adapter_model.safetensors``.
    """
    directory = Path(path)
    if not directory.is_dir():
        return [f"{directory} is not a directory"]
    if (directory / "adapter_config.json").is_file():
        return adapter_problems(directory)
    return merged_problems(directory)


def _lora_rank_flag(adapter: Path) -> int:
    rank = int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 16))
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def vllm_command(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    name: str | None = None,
    base: str | None = None,
) -> list[str]:
    """The ``vllm serve`` command line for a merged directory or an adapter directory.

    For an adapter the base model is served with ``--enable-lora --lora-modules NAME=DIR``
    (base from ``adapter_config.json`` unless ``base`` is given); clients ask for ``NAME``.

    Raises:
        ModelLoadError: ``path`` is neither a model directory nor an adapter directory.
    """
    directory = Path(path).resolve()
    name = name or directory.name
    if (directory / "adapter_config.json").is_file():
        base_model = base or adapter_base(directory)
        command = ["vllm", "serve", base_model, "--enable-lora"]
        command += ["--lora-modules", f"{name}={directory}"]
        command += ["--max-lora-rank", str(_lora_rank_flag(directory))]
    elif (directory / "config.json").is_file():
        command = ["vllm", "serve", str(directory), "--served-model-name", name]
    else:
        raise ModelLoadError(
            f"{directory} is neither a merged model (config.json) nor an adapter "
            "(adapter_config.json)"
        )
    command += ["--host", host, "--port", str(port)]
    if api_key:
        command += ["--api-key", api_key]
    return command


def vllm_available() -> bool:
    """Whether vLLM is importable here."""
    return importlib.util.find_spec("vllm") is not None


def exec_vllm(command: list[str]) -> None:
    """Replace this process by ``command`` when vLLM is installed.

    Raises:
        MissingDependencyError: vLLM is not installed (the message has the install line and
            the command to run on a GPU machine).
    """
    import os

    if not vllm_available():
        require("vllm", f"Serving with vLLM (on a GPU machine run: {shlex.join(command)})")
    os.execvp(command[0], command)  # pragma: no cover - needs vLLM and a GPU
