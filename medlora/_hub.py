"""Find a model: a local directory, or a hub id resolved to the local cache or a download."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from medlora._errors import ModelLoadError
from medlora._io import write_json


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_model(name_or_path: str | Path) -> Path:
    """A local directory holding the model's ``config.json``.

    Args:
        name_or_path: A directory, or a hub id such as ``TinyLlama/TinyLlama-1.1B-Chat-v1.0``
            (taken from the local Hugging Face cache, or downloaded when online).

    Raises:
        ModelLoadError: The directory lacks ``config.json``, or the hub id is not cached and
            the hub cannot be reached; the message says how to point at a local directory.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json: point at a Hugging Face model directory "
                "(config.json, *.safetensors, tokenizer files)."
            )
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelLoadError(
            f"{name!r} is neither an existing directory nor a hub id of the form "
            "'owner/name'. Check the path."
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]
    try:
        local = snapshot_download(name, allow_patterns=patterns, local_files_only=_offline())
    except Exception as exc:  # huggingface_hub raises several unrelated types here
        how = (
            "the hub is switched off (HF_HUB_OFFLINE=1)"
            if _offline()
            else "the hub cannot be reached"
        )
        raise ModelLoadError(
            f"Model {name!r} is not in the local cache and {how}. On a connected machine run "
            f"`hf download {name} --local-dir ./{name.split('/')[-1]}`, copy that directory "
            f"here, and pass its path instead of the hub id (model: ./{name.split('/')[-1]})."
        ) from exc
    return Path(local)


SUPPORTED_FAMILIES = "Llama-architecture models (TinyLlama, Llama 2, Llama 3.x, SmolLM2 and kin)"
"""What medlora trains and exports, in words for error messages."""


def check_supported(model_dir: Path) -> None:
    """Refuse, from ``config.json`` alone and before any weights load, a checkpoint medlora
    cannot train: another architecture.

    Raises:
        ModelLoadError: Naming the model type or architecture that is not supported.
    """
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{model_dir}/config.json cannot be read: {exc}") from exc
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if model_type != "llama" or architectures != ["LlamaForCausalLM"]:
        raise ModelLoadError(
            f"{model_dir} holds a model_type={model_type!r} model ({', '.join(architectures)}); "
            f"medlora supports {SUPPORTED_FAMILIES}: LlamaForCausalLM with model_type 'llama'."
        )


TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
"""The tokenizer files copied beside every adapter and merged export."""


def mark_llama_cpp_compatible(directory: Path) -> None:
    """Set ``"legacy": true`` in ``directory/tokenizer_config.json``.

    llama.cpp tokenizes the text after a special token (``</s>`` between chat turns) with a
    leading ``▁``, as SentencePiece does; transformers 5's Llama tokenizer does so only with
    ``legacy=True``. medlora trains with ``legacy=True`` (see :func:`load_tokenizer`) and marks
    every tokenizer it writes, so training, vLLM and llama.cpp see the same ids.
    """
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("legacy") is not True:
        config["legacy"] = True
        write_json(path, config)


def copy_tokenizer_files(src: Path, dst: Path, tokenizer: Any = None) -> None:
    """Copy the tokenizer files of ``src`` into ``dst``, marked as in training, with the chat
    template training used written as servers need it
    (:func:`medlora._template.write_served_chat_template`; ``tokenizer``, the one loaded from
    ``src``, saves loading it again)."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    mark_llama_cpp_compatible(dst)
    from medlora._template import write_served_chat_template

    write_served_chat_template(dst, load_tokenizer(dst) if tokenizer is None else tokenizer)


def load_tokenizer(model_dir: Path) -> Any:
    """The model's fast tokenizer, with pad set to EOS when it has none (TinyLlama's choice).

    Loaded with ``legacy=True`` so chat prompts tokenize exactly as llama.cpp tokenizes them
    (see :func:`mark_llama_cpp_compatible`).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, legacy=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer in {model_dir}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"{model_dir} has only a slow tokenizer; medlora needs a fast one "
            "(tokenizer.json, or tokenizer.model with the tokenizers package)."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_dir: Path, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)``, with the safetensors
    weights read with ``pread`` instead of through a memory map.

    transformers maps each checkpoint file and reads its tensors through the map: every page
    read stays resident until loading ends, and tensors whose dtype already matches keep
    aliasing the map (measured on the 4-bit 1.1B reference from a float32 base: 5.07 GB peak
    RSS, 4.4 GB of it file pages). Here the shards are opened with safetensors' ``pread``
    backend (what transformers itself uses on Windows) and their lazy slices handed to
    ``from_pretrained`` as its ``state_dict``, so each tensor is read into memory of its own
    and a quantized weight's source is freed as loading goes. What the path load takes from
    the directory besides the weights is passed or set the same way: the config, the
    generation config and ``name_or_path`` (peft writes it into ``adapter_config.json``);
    the loaded model is identical (tested).

    A checkpoint without safetensors files (``pytorch_model.bin``), or one that is not a
    Llama (refused by the caller), loads by transformers' own path load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from medlora._safetensors import checkpoint_files, read_lazily

    files = checkpoint_files(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if not files or config.model_type != "llama":
        return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    with read_lazily(files) as state_dict:
        model = LlamaForCausalLM.from_pretrained(
            None,
            config=config,
            state_dict=state_dict,
            generation_config=_generation_config(model_dir),
            **kwargs,
        )
    # from_pretrained names the model after its first argument, here None
    model.config.name_or_path = model.name_or_path = str(model_dir)
    return model


def _generation_config(model_dir: Path) -> Any:
    """The generation config ``from_pretrained(model_dir)`` gives a causal LM: the directory's
    ``generation_config.json``, else one made from ``config.json``."""
    from transformers import GenerationConfig

    if (model_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(model_dir)
    return GenerationConfig.from_pretrained(
        model_dir, config_file_name="config.json", _from_model_config=True
    )


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter names in its ``adapter_config.json``."""
    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} cannot be read: {exc}") from exc
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ModelLoadError(
            f"{config_path} names no base_model_name_or_path; pass base=... to medlora.load"
        )
    return base
