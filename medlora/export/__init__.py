"""Adapters, merged Hugging Face weights and GGUF files, each checked against training."""

from medlora.export._config import DEFAULT_MAX_MERGE_KL, DEFAULT_MIN_AGREEMENT, ExportConfig
from medlora.export._exporter import AdapterExporter, ExportResult
from medlora.export._gguf import GGUF_LLAMA_CPP_TYPES, GGUF_NUMPY_TYPES, quantize_gguf, write_gguf
from medlora.export._gguf_lora import write_lora_gguf
from medlora.export._llama_cpp import open_gguf

__all__ = [
    "AdapterExporter",
    "DEFAULT_MAX_MERGE_KL",
    "DEFAULT_MIN_AGREEMENT",
    "ExportConfig",
    "ExportResult",
    "GGUF_LLAMA_CPP_TYPES",
    "GGUF_NUMPY_TYPES",
    "open_gguf",
    "quantize_gguf",
    "write_gguf",
    "write_lora_gguf",
]
