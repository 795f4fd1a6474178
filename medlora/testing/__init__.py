"""Offline model and tokenizer factories, so pipelines can be tested on a CPU with no downloads.

Example:
    >>> from medlora.testing import make_tiny_llama
    >>> model_dir = make_tiny_llama(tmp_path / "tiny")  # doctest: +SKIP
"""

from medlora.testing._models import (
    TINY,
    TINYLLAMA_1B,
    TinyLlamaSpec,
    make_tiny_llama,
    make_tinyllama_shaped,
)
from medlora.testing._smollm2 import cache_dir, smollm2_135m_instruct
from medlora.testing._tokenizer import tokenizer_from_gguf_vocab, train_sentencepiece

__all__ = [
    "TINY",
    "TINYLLAMA_1B",
    "TinyLlamaSpec",
    "cache_dir",
    "make_tiny_llama",
    "make_tinyllama_shaped",
    "smollm2_135m_instruct",
    "tokenizer_from_gguf_vocab",
    "train_sentencepiece",
]
