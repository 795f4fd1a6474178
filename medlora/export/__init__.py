"""Adapters, merged Hugging Face weights and GGUF files, each checked against training."""

from medlora._llama_cpp import open_gguf
from medlora.export._card import with_evaluation
from medlora.export._config import (
    DEFAULT_MAX_MERGE_KL,
    DEFAULT_MAX_PPL_RATIO,
    DEFAULT_MAX_REPLY_KL,
    DEFAULT_MIN_AGREEMENT,
    ExportConfig,
)
from medlora.export._exporter import AdapterExporter, ExportResult
from medlora.export._fidelity import FidelityText
from medlora.export._gguf import GGUF_LLAMA_CPP_TYPES, GGUF_NUMPY_TYPES, quantize_gguf, write_gguf
from medlora.export._gguf_lora import write_lora_gguf
from medlora.export._imatrix import IMATRIX_TYPES, ImportanceMatrix, collect_imatrix
from medlora.export._merge import merge_adapter
from medlora.export._parity import (
    Agreement,
    ParityRow,
    compare_replies,
    hf_logits,
    llama_cpp_logits,
)

__all__ = [
    "AdapterExporter",
    "Agreement",
    "DEFAULT_MAX_MERGE_KL",
    "DEFAULT_MAX_PPL_RATIO",
    "DEFAULT_MAX_REPLY_KL",
    "DEFAULT_MIN_AGREEMENT",
    "ExportConfig",
    "ExportResult",
    "FidelityText",
    "GGUF_LLAMA_CPP_TYPES",
    "GGUF_NUMPY_TYPES",
    "IMATRIX_TYPES",
    "ImportanceMatrix",
    "ParityRow",
    "collect_imatrix",
    "compare_replies",
    "hf_logits",
    "llama_cpp_logits",
    "merge_adapter",
    "open_gguf",
    "quantize_gguf",
    "with_evaluation",
    "write_gguf",
    "write_lora_gguf",
]
