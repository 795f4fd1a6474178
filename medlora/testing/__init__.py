"""Offline model and tokenizer factories, so pipelines can be tested on a CPU with no downloads.

Example:
    >>> from medlora.testing import make_tiny_llama
    >>> model_dir = make_tiny_llama(tmp_path / "tiny")  # doctest: +SKIP
"""

from medlora.testing._llama3 import (
    LLAMA3_BPE_VOCAB,
    LLAMA3_ROPE,
    TINY_LLAMA3,
    llama3_tokenizer,
    make_tiny_llama3,
)
from medlora.testing._models import (
    TINY,
    TINYLLAMA_1B,
    TinyLlamaSpec,
    make_tiny_llama,
    make_tinyllama_shaped,
)
from medlora.testing._sdist import llama_cpp_sdist
from medlora.testing._smollm2 import cache_dir, smollm2_135m_instruct
from medlora.testing._tokenizer import tokenizer_from_gguf_vocab, train_sentencepiece

__all__ = [
    "LLAMA3_BPE_VOCAB",
    "LLAMA3_ROPE",
    "TINY",
    "TINYLLAMA_1B",
    "TINY_LLAMA3",
    "TinyLlamaSpec",
    "cache_dir",
    "llama3_tokenizer",
    "llama_cpp_sdist",
    "make_tiny_llama",
    "make_tiny_llama3",
    "make_tinyllama_shaped",
    "smollm2_135m_instruct",
    "tokenizer_from_gguf_vocab",
    "train_sentencepiece",
]
