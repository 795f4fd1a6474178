"""Hugging Face Llama directory -> GGUF file, without a llama.cpp checkout.

:func:`write_gguf` converts in numpy (F32, F16, BF16, Q8_0, Q4_0) while streaming one tensor at
a time from the safetensors files, so peak memory stays near one copy of the largest tensor.
:func:`quantize_gguf` then uses llama.cpp's own quantizer (through llama-cpp-python) for the
K-quants. Both write beside the target under a temporary name and rename only on success.
"""

from __future__ import annotations

import ctypes
import difflib
import functools
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlora._errors import ConfigError, ExportError
from medlora._io import atomic_path
from medlora._optional import require
from medlora._safetensors import StoredTensor, stored_tensors
from medlora.export._gguf_rope import ROPE_FREQS_TENSOR, Rope, add_rope_keys, read_rope, rope_freqs
from medlora.export._gguf_vocab import GGUFVocab, add_vocab, gguf_tokenizer_report, load_vocab

if TYPE_CHECKING:
    from medlora.export._imatrix import ImportanceMatrix

__all__ = [
    "GGUF_LLAMA_CPP_TYPES",
    "GGUF_NUMPY_TYPES",
    "gguf_tokenizer_report",
    "quantize_gguf",
    "write_gguf",
]

GGUF_NUMPY_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
"""Target types :func:`write_gguf` writes itself (gguf-py's numpy quantizers)."""
GGUF_LLAMA_CPP_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
"""Target types :func:`quantize_gguf` makes with llama.cpp's quantizer."""

_FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2}  # gguf.LlamaFileType
_DROPPED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class _TensorPlan:
    source: str
    """Name in the safetensors file."""
    name: str
    """GGUF name (``blk.0.attn_q.weight``)."""
    shape: tuple[int, ...]
    qtype: str
    """``F32``, ``F16``, ``BF16``, ``Q8_0`` or ``Q4_0``."""
    permute_heads: int
    """Heads for the Q/K rotate-half -> pairwise permutation; 0 for no permutation."""


def write_gguf(
    model_dir: Path,
    out_path: Path,
    *,
    outtype: str = "F16",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert a Hugging Face Llama directory (safetensors + tokenizer) to one GGUF file.

    Args:
        model_dir: Directory with ``config.json``, ``model.safetensors`` (or shards with
            ``model.safetensors.index.json``) and ``tokenizer.model`` or ``tokenizer.json``.
        out_path: The ``.gguf`` file to write; a previous file there is replaced only once the
            new one is complete.
        outtype: One of :data:`GGUF_NUMPY_TYPES`. 1-D tensors and norms stay F32; a tensor whose
            rows do not divide the quantization block falls back to F16, as in llama.cpp.
        metadata: Extra string keys, e.g. ``general.license``, ``general.description``,
            ``general.base_model`` (written as GGUF's ``general.base_model.0.name``). Keys must
            start with ``general.`` or ``medlora.``. ``medlora.version`` is added by default.

    Returns:
        ``out_path``.

    Raises:
        ConfigError: An unknown ``outtype`` or metadata key.
        ExportError: Not a Llama model, missing weights or tokenizer, an unknown tensor, a
            RoPE type other than default/linear/llama3, a tokenizer that is neither Llama
            SentencePiece nor a recognised byte-level BPE, or a byte-level BPE that llama.cpp
            tokenizes differently from the HF tokenizer (checked before any tensor is written).
    """
    gguf = require("gguf", "GGUF export")
    model_dir, out_path = Path(model_dir), Path(out_path)
    qtype = _check_type(outtype, GGUF_NUMPY_TYPES, "write_gguf", other=GGUF_LLAMA_CPP_TYPES)
    extra = _check_metadata(metadata or {})
    config = _read_llama_config(model_dir)
    rope = read_rope(config)
    n_layers = int(config["num_hidden_layers"])

    with stored_tensors(model_dir) as handles:
        plans = _plan(
            handles, config, qtype, gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
        )
        embed = next((p for p in plans if p.name == "token_embd.weight"), None)
        if embed is None:
            raise ExportError(f"{model_dir} has no model.embed_tokens.weight tensor")
        vocab = load_vocab(model_dir, n_vocab=embed.shape[0])
        if vocab.model == "gpt2":
            _check_byte_level_vocab(model_dir, config, rope, vocab, gguf)
        extras = _extra_tensors(config, rope)

        with atomic_path(out_path) as tmp:
            writer = gguf.GGUFWriter(str(tmp), "llama")
            try:
                writer.add_type(gguf.GGUFType.MODEL)
                writer.add_name(extra.pop("general.name", model_dir.name))
                _add_hparams(writer, gguf, config, rope, embed.shape[0], qtype)
                add_metadata(writer, extra)
                add_vocab(writer, vocab, model_dir)
                _add_tensor_infos(writer, gguf, extras, plans)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                _write_tensor_data(writer, gguf, extras, plans, handles)
                writer.flush()
            finally:
                writer.close()
    return out_path


def add_metadata(writer: Any, extra: Mapping[str, str]) -> None:
    """Write checked metadata keys (:func:`_check_metadata`); ``general.base_model`` becomes
    GGUF's ``general.base_model.0.name``."""
    for key, value in extra.items():
        if key == "general.base_model":
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, value)
        else:
            writer.add_string(key, value)


def _add_tensor_infos(
    writer: Any, gguf: Any, extras: Mapping[str, Any], plans: list[_TensorPlan]
) -> None:
    """Declare every tensor: the computed extras first, as llama.cpp's converter does."""
    for name, array in extras.items():
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
    for p in plans:
        raw = gguf.GGMLQuantizationType[p.qtype]
        block, type_size = gguf.GGML_QUANT_SIZES[raw]
        nbytes = _numel(p.shape) // block * type_size
        writer.add_tensor_info(p.name, p.shape, _f32(), nbytes, raw_dtype=raw)


def _write_tensor_data(
    writer: Any,
    gguf: Any,
    extras: Mapping[str, Any],
    plans: list[_TensorPlan],
    handles: Mapping[str, Any],
) -> None:
    """Every tensor's data, in declaration order, one tensor in memory at a time."""
    # Stored-dtype tensors reuse one read buffer (a fresh 100+ MB allocation per tensor is
    # page-faulted in again each time).
    scratch = bytearray(max(_numel(h.shape) * 4 for h in handles.values()))
    for array in extras.values():
        writer.write_tensor_data(_fast_write(array))
    for p in plans:
        data = _convert(handles[p.source], p, gguf, scratch)
        writer.write_tensor_data(_fast_write(data))  # written before the next read


def quantize_gguf(
    src: Path,
    dst: Path,
    qtype: str,
    *,
    threads: int | None = None,
    imatrix: ImportanceMatrix | None = None,
) -> Path:
    """Re-quantize a GGUF file (F16 or F32 is best) with llama.cpp's quantizer.

    Args:
        src: The input GGUF file, usually from :func:`write_gguf`.
        dst: The output file; replaced only once the new one is complete.
        qtype: One of :data:`GGUF_LLAMA_CPP_TYPES` (``"Q4_K_M"`` is the usual choice).
        threads: Quantizer threads; when ``None``, those of an enclosing
            ``ExportConfig.threads`` export, else llama.cpp's default (all cores).
        imatrix: An importance matrix (:func:`~medlora.export.collect_imatrix`) to weigh the
            rounding error by; the K-quants use it, Q8_0 ignores it. The file records it in
            ``quantize.imatrix.entries_count``/``chunks_count``/``dataset``.

    Raises:
        ConfigError: An unknown ``qtype``.
        ExportError: llama.cpp refused the file (details are on stderr), or did not take the
            importance matrix.
    """
    name = _check_type(qtype, GGUF_LLAMA_CPP_TYPES, "quantize_gguf", other=GGUF_NUMPY_TYPES)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(f"{src} does not exist; write it first with write_gguf()")
    llama_cpp = require("llama_cpp", "GGUF quantization")
    from medlora._llama_cpp import captured_stderr, llama_cpp_log_lines
    from medlora._threads import default_threads
    from medlora.export._imatrix import check_imatrix_log, quantize_extras

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    threads = default_threads() if threads is None else threads
    if threads is not None:
        params.nthread = int(threads)
    extras = quantize_extras(llama_cpp, imatrix) if imatrix is not None else None
    if extras is not None:
        params.imatrix = extras.imatrix
        params.kv_overrides = extras.kv_overrides
    with atomic_path(dst) as tmp:
        with captured_stderr() as log, llama_cpp_log_lines():
            code = llama_cpp.llama_model_quantize(
                str(src).encode(), str(tmp).encode(), ctypes.byref(params)
            )
        if code != 0:
            reason = "\n".join(log[-5:]) or "(llama.cpp printed nothing)"
            raise ExportError(
                f"llama.cpp could not quantize {src} to {name} (return code {code}):\n{reason}"
            )
        if imatrix is not None:
            check_imatrix_log(log, imatrix)
    return dst


def _check_type(value: str, valid: tuple[str, ...], func: str, *, other: tuple[str, ...]) -> str:
    name = value.upper()
    if name in valid:
        return name
    if name in other:
        where = "quantize_gguf()" if func == "write_gguf" else "write_gguf(outtype=...)"
        hint = f" {name} is made by {where}."
    else:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{func} cannot make {value!r}; valid types: {', '.join(valid)}.{hint}")


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    extra = {"medlora.version": _medlora_version()}
    bad = [k for k in metadata if not k.startswith(("general.", "medlora."))]
    if bad:
        raise ConfigError(f"GGUF metadata keys must start with 'general.' or 'medlora.': {bad}")
    extra.update({k: str(v) for k, v in metadata.items()})
    return extra


def _medlora_version() -> str:
    try:
        return importlib_metadata.version("medlora")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _read_llama_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir} has no config.json; is it a Hugging Face model directory?")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or (archs and archs[0] != "LlamaForCausalLM"):
        found = archs[0] if archs else config.get("model_type", "unknown")
        raise ExportError(
            f"GGUF export supports only Llama-architecture models (LlamaForCausalLM), but "
            f"{model_dir} holds {found!r}"
        )
    return config


def gguf_preflight(model_dir: Path) -> None:
    """Refuse early (before merging or loading weights) what :func:`write_gguf` would refuse
    from the files alone: another architecture, an unsupported RoPE type or tokenizer.

    Raises:
        ExportError: As :func:`write_gguf` would, naming what is unsupported.
    """
    model_dir = Path(model_dir)
    config = _read_llama_config(model_dir)
    read_rope(config)
    if config.get("vocab_size"):
        load_vocab(model_dir, n_vocab=int(config["vocab_size"]))


def _head_dim(config: Mapping[str, Any]) -> int:
    n_head = int(config["num_attention_heads"])
    return int(config.get("head_dim") or int(config["hidden_size"]) // n_head)


def _extra_tensors(config: Mapping[str, Any], rope: Rope) -> dict[str, Any]:
    """Tensors the GGUF file needs that the checkpoint does not hold: llama3 ``rope_freqs``."""
    freqs = rope_freqs(rope, _head_dim(config))
    return {} if freqs is None else {ROPE_FREQS_TENSOR: freqs}


def _check_byte_level_vocab(
    model_dir: Path, config: Mapping[str, Any], rope: Rope, vocab: GGUFVocab, gguf: Any
) -> None:
    """Write the file's header alone (no tensors) and prove that llama.cpp tokenizes the check
    corpus as the HF tokenizer does (:func:`~medlora.export._gguf_bpe.check_tokenization`)."""
    from medlora._hub import load_tokenizer
    from medlora.export._gguf_bpe import check_tokenization

    with tempfile.TemporaryDirectory(prefix="medlora-vocab-") as tmp:
        path = _write_vocab_only(Path(tmp) / "vocab.gguf", model_dir, config, rope, vocab, gguf)
        tokenizer = load_tokenizer(model_dir)
        check_tokenization(path, tokenizer, what=f"pre-tokenizer {vocab.pre!r}")


def _write_vocab_only(
    path: Path,
    model_dir: Path,
    config: Mapping[str, Any],
    rope: Rope,
    vocab: GGUFVocab,
    gguf: Any,
) -> Path:
    """The metadata of the file :func:`write_gguf` would write, without tensors: llama.cpp
    loads it with ``vocab_only=True``."""
    writer = gguf.GGUFWriter(str(path), "llama")
    try:
        _add_hparams(writer, gguf, config, rope, len(vocab.tokens), "F32")
        add_vocab(writer, vocab, model_dir)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
    finally:
        writer.close()
    return path


def _add_hparams(
    writer: Any, gguf: Any, config: Mapping[str, Any], rope: Rope, n_vocab: int, qtype: str
) -> None:
    n_head = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = _head_dim(config)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_key_length(head_dim)  # as llama.cpp's converter writes them, even when implied
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope.theta)
    writer.add_rope_dimension_count(head_dim)  # llama.cpp rejects the file without it
    add_rope_keys(writer, gguf, rope)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(_FILE_TYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _plan(
    handles: Mapping[str, StoredTensor], config: Mapping[str, Any], qtype: str, name_map: Any
) -> list[_TensorPlan]:
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    plans: list[_TensorPlan] = []
    for source, handle in handles.items():
        if source.endswith(_DROPPED_SUFFIXES):
            continue
        name = name_map.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            hint = " Merge the LoRA adapter first." if "lora_" in source else ""
            raise ExportError(
                f"tensor {source!r} has no GGUF name for the llama architecture.{hint}"
            )
        shape = handle.shape
        permute = n_head if ".q_proj." in source else n_kv if ".k_proj." in source else 0
        plans.append(_TensorPlan(source, name, shape, _tensor_type(name, shape, qtype), permute))
    return plans


def _tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> str:
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return "F32"
    if qtype in ("Q8_0", "Q4_0") and shape[-1] % 32 != 0:
        return "F16"  # llama.cpp's fallback for rows that are not whole blocks
    return qtype


def _convert(handle: StoredTensor, plan: _TensorPlan, gguf: Any, scratch: bytearray) -> Any:
    # F16 -> F16 and F32 -> F32 keep the stored array: the float32 round trip is exact but
    # cost 70% of an F16 export's time (measured 8.7 of 12.1 s on the 1.1B model).
    as_stored = plan.qtype == handle.dtype and plan.qtype in ("F16", "F32")
    data = handle.read_array(scratch) if as_stored else handle.read_f32()  # (out, in)
    if plan.permute_heads:  # rotate-half (HF) -> interleaved pairs (llama.cpp)
        n = plan.permute_heads
        data = (
            data.reshape(n, 2, data.shape[0] // n // 2, *data.shape[1:])
            .swapaxes(1, 2)
            .reshape(data.shape)
        )
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[plan.qtype])


def _fast_write(array: Any) -> Any:
    """``array`` as a view whose ``tofile`` is one ``file.write`` of its bytes.

    gguf-py writes tensors with ``numpy.ndarray.tofile``, measured 3.6x slower than a plain
    buffered write of the same bytes here (5.1 vs 1.4 s for 2.2 GB), which made the F16
    export slower than llama.cpp's converter. Same bytes either way.
    """
    return array.view(_writable_array_type())


@functools.cache
def _writable_array_type() -> Any:
    """The ``ndarray`` subclass of :func:`_fast_write`, made once (numpy is imported lazily)."""
    numpy = require("numpy", "GGUF export")

    class _Writable(numpy.ndarray):  # type: ignore[misc, name-defined]
        def tofile(self, fid: Any, sep: str = "", format: str = "%s") -> None:
            fid.write(memoryview(numpy.ascontiguousarray(self)).cast("B"))

    return _Writable


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _f32() -> Any:
    numpy = require("numpy", "GGUF export")
    return numpy.dtype(numpy.float32)
