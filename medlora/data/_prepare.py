"""Tokenize, truncate and pack a dataset once, cached on disk by fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from medlora._errors import DatasetError
from medlora._io import atomic_file
from medlora.data._pack import PackingReport, pack_examples
from medlora.data._tokenize import IGNORE_INDEX, TokenizedExample, tokenize_from

Truncation = Literal["right", "drop"]
_CHUNK = 1024
_CACHE_VERSION = 1


@attrs.frozen(kw_only=True)
class PreparedData:
    """Tokenized (and optionally packed) examples with what preparation did to them."""

    examples: tuple[TokenizedExample, ...]
    """Examples kept, in record order."""
    bins: tuple[tuple[int, ...], ...] | None
    """Indices into :attr:`examples` per packed row, when packing was asked for."""
    truncated: int
    """Examples cut to ``max_seq_len`` (``truncation="right"``)."""
    dropped: int
    """Examples dropped: too long (``truncation="drop"``) or with no supervised token left."""
    packing: PackingReport | None
    """Packing efficiency, when packed."""
    cache_key: str
    """Hash of data fingerprint, tokenizer and settings."""
    from_cache: bool = False
    """Whether this came from the cache."""

    def rows(self) -> list[list[TokenizedExample]]:
        """Examples grouped as packed rows (one example per row when not packed)."""
        if self.bins is None:
            return [[e] for e in self.examples]
        return [[self.examples[i] for i in b] for b in self.bins]


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's vocabulary, special tokens and chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer).encode())
    for name in ("bos_token", "eos_token", "pad_token", "chat_template"):
        digest.update(repr(getattr(tokenizer, name, None)).encode())
    return digest.hexdigest()


def tokenize_all(
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_seq_len: int,
    assistant_only: bool,
    truncation: Truncation,
    first_index: int = 0,
) -> tuple[list[TokenizedExample], int, int]:
    """Examples kept, number truncated, number dropped (problems name conversation
    ``first_index + n``)."""
    if truncation not in ("right", "drop"):
        raise DatasetError(f"truncation={truncation!r} must be 'right' or 'drop'")
    kept: list[TokenizedExample] = []
    truncated = dropped = 0
    for at in range(0, len(conversations), _CHUNK):
        chunk = conversations[at : at + _CHUNK]
        for ex in tokenize_from(
            tokenizer, chunk, max_seq_len, assistant_only, first_index=first_index + at
        ):
            if ex.truncated and truncation == "drop":
                dropped += 1
                continue
            if ex.labels.count(IGNORE_INDEX) == len(ex.labels):
                dropped += 1
                continue
            truncated += ex.truncated
            kept.append(ex)
    return kept, truncated, dropped


def prepare(
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    fingerprint: str,
    max_seq_len: int,
    assistant_only: bool,
    truncation: Truncation,
    pack: bool,
    cache_dir: str | Path | None,
) -> PreparedData:
    """See ``ClinicalDataset.prepare``."""
    settings = {
        "v": _CACHE_VERSION,
        "data": fingerprint,
        "tokenizer": tokenizer_hash(tokenizer),
        "max_seq_len": max_seq_len,
        "assistant_only": assistant_only,
        "truncation": truncation,
        "pack": pack,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    cached = Path(cache_dir) / f"prepared-{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        data = json.loads(cached.read_text())
        return _from_json(data, key)
    examples, truncated, dropped = tokenize_all(
        tokenizer,
        conversations,
        max_seq_len=max_seq_len,
        assistant_only=assistant_only,
        truncation=truncation,
    )
    bins = report = None
    if pack:
        found, report = pack_examples([len(e) for e in examples], max_seq_len)
        bins = tuple(tuple(b) for b in found)
    result = PreparedData(
        examples=tuple(examples),
        bins=bins,
        truncated=truncated,
        dropped=dropped,
        packing=report,
        cache_key=key,
    )
    if cached is not None:
        with atomic_file(cached) as handle:
            json.dump(_to_json(result), handle)
    return result


def _to_json(p: PreparedData) -> dict[str, Any]:
    return {
        "input_ids": [list(e.input_ids) for e in p.examples],
        "labels": [list(e.labels) for e in p.examples],
        "truncated_flags": [e.truncated for e in p.examples],
        "bins": None if p.bins is None else [list(b) for b in p.bins],
        "truncated": p.truncated,
        "dropped": p.dropped,
        "packing": None if p.packing is None else attrs.asdict(p.packing),
    }


def _from_json(d: dict[str, Any], key: str) -> PreparedData:
    examples = tuple(
        TokenizedExample(input_ids=tuple(i), labels=tuple(lab), truncated=t)
        for i, lab, t in zip(d["input_ids"], d["labels"], d["truncated_flags"], strict=True)
    )
    return PreparedData(
        examples=examples,
        bins=None if d["bins"] is None else tuple(tuple(b) for b in d["bins"]),
        truncated=d["truncated"],
        dropped=d["dropped"],
        packing=None if d["packing"] is None else PackingReport(**d["packing"]),
        cache_key=key,
        from_cache=True,
    )
