"""Data hygiene: exact and near duplicates, train/eval contamination, statistics, data card.

Exact duplicates share the SHA-1 of their normalised text (lower case, whitespace collapsed).
Near duplicates are found with MinHash over word 5-gram shingles (64 permutations, LSH with 16
bands of 4 rows) and confirmed by the exact Jaccard similarity of the shingle sets, so a
reported pair really is above the threshold. Pure Python: ``datasketch`` would add a dependency
for the same few lines, and this runs in about a second on 10,000 records.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

_WORD = re.compile(r"\w+")
_PERMUTATIONS = 64
_BANDS = 16
_MASK = (1 << 61) - 1


def normalise(text: str) -> str:
    """Lower case, words only, single spaces: the form duplicates are compared in."""
    return " ".join(_WORD.findall(text.lower()))


def _shingles(text: str, n: int = 5) -> set[str]:
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _seeds() -> list[tuple[int, int]]:
    out = []
    for i in range(_PERMUTATIONS):
        h = hashlib.sha256(f"medlora-minhash-{i}".encode()).digest()
        out.append((int.from_bytes(h[:8], "big") | 1, int.from_bytes(h[8:16], "big")))
    return out


_SEEDS = _seeds()


def _minhash(shingles: set[str]) -> tuple[int, ...]:
    hashes = [
        int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") for s in shingles
    ]
    if not hashes:
        return (0,) * _PERMUTATIONS
    return tuple(min((a * h + b) & _MASK for h in hashes) for a, b in _SEEDS)


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def exact_key(text: str) -> bytes:
    """The 20-byte key under which exact duplicates meet: SHA-1 of the normalised text."""
    return hashlib.sha1(normalise(text).encode()).digest()


def exact_duplicates(texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Groups (of two or more indices) whose normalised texts are identical."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        groups[exact_key(text)].append(i)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def near_duplicates(
    texts: Sequence[str], *, threshold: float = 0.8, others: Sequence[str] | None = None
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)`` with shingle Jaccard >= ``threshold`` (and not identical).

    With ``others`` the pairs are ``texts[i]`` against ``others[j]`` (a contamination check);
    otherwise within ``texts``, ``i < j``.
    """
    if others is None:
        return NearIndex(texts).matches(texts, threshold=threshold, same=True)
    return NearIndex(others).matches(texts, threshold=threshold)


class NearIndex:
    """MinHash LSH buckets of some texts, queried with other texts batch by batch."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.shingles = [_shingles(t) for t in texts]
        self.buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
        rows = _PERMUTATIONS // _BANDS
        for j, sh in enumerate(self.shingles):
            sig = _minhash(sh)
            for band in range(_BANDS):
                self.buckets[(band, sig[band * rows : (band + 1) * rows])].append(j)

    def matches(
        self, texts: Sequence[str], *, threshold: float, same: bool = False
    ) -> list[tuple[int, int, float]]:
        """``(i, j, jaccard)`` of ``texts[i]`` against indexed text ``j`` at or above
        ``threshold``, in order (``same``: ``texts`` are the indexed ones; only ``i < j``)."""
        left = self.shingles if same else [_shingles(t) for t in texts]
        rows = _PERMUTATIONS // _BANDS
        pairs: set[tuple[int, int]] = set()
        for i, sh in enumerate(left):
            sig = _minhash(sh)
            for band in range(_BANDS):
                for j in self.buckets.get((band, sig[band * rows : (band + 1) * rows]), ()):
                    if same and j <= i:
                        continue
                    pairs.add((i, j))
        out = []
        for i, j in sorted(pairs):
            score = jaccard(left[i], self.shingles[j])
            if score >= threshold:
                out.append((i, j, round(score, 4)))
        return out


def length_stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "median": float(statistics.median(ordered)),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


@attrs.frozen(kw_only=True)
class DataCard:
    """A frozen summary of a dataset, embedded later in model cards."""

    source: str
    """Where the records came from."""
    fingerprint: str
    """SHA-256 of the training view (``ClinicalDataset.fingerprint``)."""
    records: int
    """Number of records."""
    kinds: Mapping[str, int]
    """Records per kind."""
    groups: int | None
    """Distinct patient/encounter groups, when records are grouped."""
    chars: Mapping[str, float]
    """Length statistics of the rendered conversation in characters (min/mean/median/p95/max)."""
    turns: Mapping[str, float]
    """Statistics of messages per record."""
    exact_duplicate_groups: int
    """Groups of records with identical normalised text."""
    near_duplicate_pairs: int | None
    """Pairs above the near-duplicate threshold (not identical); ``None``: not searched
    (``ArrowDataset``, data on disk)."""
    skipped: int
    """Records dropped while loading with ``on_error="skip"``."""

    def to_json(self) -> str:
        """The card as indented JSON."""
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    def to_markdown(self) -> str:
        """The card as a markdown section for a model card."""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        lines = [
            "## Training data",
            "",
            "| | |",
            "|---|---|",
            f"| source | `{self.source}` |",
            f"| fingerprint | `{self.fingerprint[:16]}` |",
            f"| records | {self.records} |",
            f"| kinds | {kinds} |",
            f"| patient/encounter groups | {self.groups if self.groups is not None else 'n/a'} |",
            f"| characters per record | median {self.chars['median']:g}, p95 {self.chars['p95']:g}"
            f", max {self.chars['max']:g} |",
            f"| exact duplicate groups | {self.exact_duplicate_groups} |",
            f"| near-duplicate pairs | {_or_not_searched(self.near_duplicate_pairs)} |",
            f"| skipped while loading | {self.skipped} |",
        ]
        return "\n".join(lines) + "\n"


def _or_not_searched(count: int | None) -> str:
    return "not searched" if count is None else str(count)


@attrs.frozen(kw_only=True)
class DedupReport:
    """Duplicates removed by ``ClinicalDataset.deduplicate``: ids only, never the text."""

    mode: str
    """``exact`` or ``near`` (exact and near duplicates)."""
    removed: tuple[tuple[str, str, float], ...]
    """``(removed id, id of the kept record it repeats, similarity)``; 1.0 for exact."""

    @property
    def exact(self) -> int:
        """Records removed as exact duplicates."""
        return sum(1 for *_, s in self.removed if s >= 1.0)

    @property
    def near(self) -> int:
        """Records removed as near duplicates."""
        return len(self.removed) - self.exact


def conversation_text(messages: Sequence[Mapping[str, str]]) -> str:
    """Plain text of a conversation, for hashing and similarity."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def build_card(
    *,
    source: str,
    fingerprint: str,
    kinds: Mapping[str, int],
    conversations: Sequence[Sequence[Mapping[str, str]]],
    groups: Sequence[str | None],
    skipped: int,
    near_threshold: float,
) -> DataCard:
    """Compute a :class:`DataCard` (see ``ClinicalDataset.describe``)."""
    texts = [conversation_text(m) for m in conversations]
    distinct: Any = {g for g in groups if g is not None}
    return DataCard(
        source=source,
        fingerprint=fingerprint,
        records=len(texts),
        kinds=dict(sorted(Counter(kinds).items())),
        groups=len(distinct) if distinct else None,
        chars=length_stats([len(t) for t in texts]),
        turns=length_stats([len(m) for m in conversations]),
        exact_duplicate_groups=len(exact_duplicates(texts)),
        near_duplicate_pairs=len(near_duplicates(texts, threshold=near_threshold)),
        skipped=skipped,
    )
