"""llama.cpp's importance matrix, collected from the Hugging Face model, for its quantizer.

llama.cpp's K-quant and low-bit quantizers choose each block's scales to minimise a *weighted*
rounding error; with an importance matrix the weight of input column ``j`` of a matrix is the
mean squared activation ``E[x_j^2]`` that column multiplies, so columns that carry signal are
rounded most carefully. llama.cpp's ``llama-imatrix`` tool collects it from the inputs of every
matrix multiplication ``blk.*`` in a GGUF model; :func:`collect_imatrix` collects the same
statistic with forward hooks on the HF model's linear layers and keys it by GGUF tensor name.

* Q and K are permuted for GGUF over their *output* rows (rotate-half -> pairwise), which
  leaves the input columns, and so their statistics, in place.
* Like ``llama-imatrix`` by default, ``output.weight`` (the LM head) gets no entry, and
  ``token_embd.weight`` never does: it is a row lookup, not a matrix product of activations
  (with tied embeddings llama.cpp reads the head from it, and its quantizer logs "did not find
  weights for token_embd.weight" and quantizes it unweighted, as for its own imatrix files).
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from medlora._errors import ExportError

logger = logging.getLogger("medlora.export")

IMATRIX_TYPES = ("Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
"""GGUF types whose llama.cpp quantizer weighs rounding error by an importance matrix (Q8_0
and the numpy-written types ignore it)."""


@attrs.frozen(kw_only=True)
class ImportanceMatrix:
    """Mean squared input activation per input column of each weight matrix."""

    values: Mapping[str, Any] = attrs.field(repr=False)
    """GGUF tensor name (``blk.0.attn_q.weight``) -> float32 array (in_features,)."""
    tokens: int
    """Tokens of calibration text the means are over."""
    chunks: int
    """Calibration sequences."""
    dataset: str = ""
    """What the calibration text was, recorded in the quantized file."""

    def __attrs_post_init__(self) -> None:
        import numpy as np

        bad = [k for k, v in self.values.items() if not np.all(np.isfinite(v)) or np.any(v < 0)]
        if bad:
            raise ExportError(
                f"importance matrix entries {bad[:4]} hold negative or non-finite values; "
                "collect it again (check the calibration text and the model for NaNs)"
            )


def collect_imatrix(
    model: Any, ids: Sequence[Sequence[int]], *, dataset: str = ""
) -> ImportanceMatrix:
    """Run ``model`` (a Llama-architecture HF model) over ``ids`` and average the squared
    input of every linear layer inside the decoder blocks, per input column.

    Args:
        model: The model being exported (merged weights), on any device.
        ids: Calibration token id sequences (training records), one forward pass each.
        dataset: A short description recorded beside the values.
    """
    import gguf
    import numpy as np
    import torch

    n_layers = int(model.config.num_hidden_layers)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    sums: dict[str, Any] = {}
    tokens = 0

    def hook_for(name: str) -> Any:
        def hook(_module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach().float()  # (batch, seq, in_features)
            squares = x.pow(2).reshape(-1, x.shape[-1]).sum(0).double().cpu()
            sums[name] = sums[name] + squares if name in sums else squares

        return hook

    handles = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        gguf_name = name_map.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
        if gguf_name is None or not gguf_name.startswith("blk."):
            continue  # the LM head (output.weight), as llama-imatrix does by default
        handles.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    if not handles:
        raise ExportError("no decoder-block linear layer found for the importance matrix")
    device = next(p for p in model.parameters()).device
    try:
        with torch.no_grad():
            for seq in ids:
                model(input_ids=torch.tensor([list(seq)], device=device))
                tokens += len(seq)
    finally:
        for handle in handles:
            handle.remove()
    values = {k: (v / max(tokens, 1)).numpy().astype(np.float32) for k, v in sums.items()}
    return ImportanceMatrix(values=values, tokens=tokens, chunks=len(ids), dataset=dataset)


@attrs.define
class QuantizeExtras:
    """ctypes arrays handed to ``llama_model_quantize``: the importance matrix and the
    metadata recorded with it. Keep the object alive until the call returns (llama.cpp reads
    the caller's memory; nothing is copied before the call)."""

    imatrix: Any = None
    kv_overrides: Any = None
    keep: list[Any] = attrs.field(factory=list)


def quantize_extras(llama_cpp: Any, imatrix: ImportanceMatrix) -> QuantizeExtras:
    """The ``llama_model_imatrix_data`` array (terminated by an entry with a NULL name, as
    ``llama.h`` requires) and ``llama_model_kv_override`` entries naming the calibration
    (``quantize.imatrix.*``, as llama.cpp's own ``llama-quantize`` writes them)."""
    import numpy as np

    entry_type = getattr(llama_cpp, "llama_model_imatrix_data", None)
    if entry_type is None:
        raise ExportError(
            "this llama-cpp-python has no llama_model_imatrix_data; upgrade it "
            "(pip install 'llama-cpp-python>=0.3.36') or set imatrix=False"
        )
    extras = QuantizeExtras()
    items = sorted(imatrix.values.items())
    entries = (entry_type * (len(items) + 1))()  # zeroed: the last entry is the terminator
    for entry, (name, value) in zip(entries, items, strict=False):
        array = np.ascontiguousarray(value, dtype=np.float32)
        encoded = name.encode()
        extras.keep += [array, encoded]
        entry.name = encoded
        entry.data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = array.size
    extras.imatrix = entries
    overrides: list[tuple[str, int, Any]] = [
        ("quantize.imatrix.entries_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, len(items)),
        ("quantize.imatrix.chunks_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, imatrix.chunks),
    ]
    if imatrix.dataset:
        text = imatrix.dataset.encode()[:127]
        overrides.append(("quantize.imatrix.dataset", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, text))
    kv = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()  # empty key terminates
    for slot, (key, tag, value) in zip(kv, overrides, strict=False):
        slot.key = key.encode()
        slot.tag = tag
        if tag == llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR:
            slot.value.val_str = value
        else:
            slot.value.val_i64 = value
    extras.kv_overrides = kv
    return extras


def check_imatrix_log(log: Sequence[str], imatrix: ImportanceMatrix) -> None:
    """Raise unless llama.cpp's quantizer log says it took the matrix; log what it said."""
    took = [line for line in log if "importance matrix" in line or "imatrix size" in line]
    missing = [line.rsplit(" ", 1)[-1] for line in log if "did not find weights for" in line]
    for line in took:
        logger.debug("llama.cpp: %s", line.strip())
    if not any("have importance matrix data" in line for line in took):
        raise ExportError(
            "llama.cpp's quantizer did not report the importance matrix "
            f"({len(imatrix.values)} entries) as used; this llama-cpp-python may ignore "
            "llama_model_quantize_params.imatrix: set imatrix=False"
        )
    unexpected = [name for name in missing if name.startswith("blk.")]
    if unexpected:
        warnings.warn(
            f"llama.cpp found no importance-matrix entry for {len(unexpected)} block tensors "
            f"({', '.join(unexpected[:3])} ...); they were quantized unweighted",
            stacklevel=3,
        )
