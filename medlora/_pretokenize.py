"""Byte-level BPE pre-tokenizer split patterns, as llama.cpp names them (``tokenizer.ggml.pre``).

Shared by the GGUF writer, which recognises them in a tokenizer, and the test tokenizers in
``medlora.testing``, which build them.
"""

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Llama 3's split (``llama-bpe``; ``smaug-bpe`` without ``ignore_merges``)."""
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
"""Qwen2's split: Llama 3's with single digits."""
