"""The text an export is measured on (held-out replies) and calibrated on (training records).

Probe prompts show whether an artefact *starts* an answer like the trained model; the honest
question is how well it predicts the answers themselves. :class:`FidelityText` holds tokenized
held-out conversations, tokenized by the training path (:meth:`ClinicalDataset.tokenize`), and
the positions whose next token is a supervised reply token (``labels != -100``): the positions
training took loss on. The run's training records, tokenized the same way, are the calibration
text for llama.cpp's importance matrix.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any

import attrs

from medlora.data import IGNORE_INDEX, ArrowDataset, ClinicalDataset, TokenizedExample
from medlora.training import RunRecord

CALIBRATION_RECORDS = 10_000
"""Records of a run trained from data on disk (the Arrow backend) that calibration draws from."""


@attrs.frozen(kw_only=True)
class FidelityText:
    """Token ids of conversations and the positions that predict a token of a reply."""

    ids: tuple[tuple[int, ...], ...]
    """Token ids fed to each model, cut after the last scored position."""
    rows: tuple[tuple[int, ...], ...]
    """Per text, the positions whose next token is supervised (``labels[t + 1] != -100``)."""
    targets: tuple[tuple[int, ...], ...]
    """Per text, the token that follows each scored position."""
    source: str
    """Where the conversations came from (``held-out records``, ...)."""

    @property
    def positions(self) -> int:
        """Scored positions over all texts."""
        return sum(map(len, self.rows))

    @classmethod
    def from_examples(
        cls,
        examples: Sequence[TokenizedExample],
        *,
        max_positions: int,
        source: str,
        seed: int = 0,
        max_per_text: int | None = None,
    ) -> FidelityText:
        """Up to ``max_positions`` reply positions from ``examples``, drawn in a seeded order
        (so every kind of record is represented, not only the first in the file).

        ``max_per_text`` caps the positions taken from one text, spread evenly over its
        replies (long replies then cost their prompt once for a representative sample).
        """
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        ids, rows, targets = [], [], []
        left = max_positions
        for index in order:
            if left <= 0:
                break
            example = examples[index]
            labels = example.labels
            scored = [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX]
            if max_per_text is not None and len(scored) > max_per_text:
                step = len(scored) / max_per_text
                scored = [scored[int(i * step)] for i in range(max_per_text)]
            scored = scored[:left]
            if not scored:
                continue
            ids.append(tuple(example.input_ids[: scored[-1] + 1]))
            rows.append(tuple(scored))
            targets.append(tuple(example.input_ids[t + 1] for t in scored))
            left -= len(scored)
        return cls(ids=tuple(ids), rows=tuple(rows), targets=tuple(targets), source=source)


@attrs.frozen(kw_only=True)
class RunText:
    """What an export measures and calibrates on, taken from its training run's records."""

    fidelity: FidelityText
    """Held-out reply positions every artefact is scored on."""
    calibration: tuple[tuple[int, ...], ...]
    """Token ids of training records for the importance matrix."""
    calibration_source: str
    """Where the calibration records came from."""

    @property
    def calibration_tokens(self) -> int:
        """Tokens of calibration text."""
        return sum(map(len, self.calibration))


def calibration_ids(
    dataset: ClinicalDataset,
    tokenizer: Any,
    *,
    max_seq_len: int,
    max_tokens: int,
    seed: int = 0,
) -> tuple[tuple[int, ...], ...]:
    """Whole tokenized records in a seeded order, up to ``max_tokens`` tokens in all (the
    last one cut to fit); records are tokenized 64 at a time, only as many as needed."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    out: list[tuple[int, ...]] = []
    left = max_tokens
    for start in range(0, len(order), 64):
        if left <= 0:
            break
        chunk = attrs.evolve(dataset, records=tuple(dataset[i] for i in order[start : start + 64]))
        for example in chunk.tokenize(tokenizer, max_seq_len=max_seq_len):
            if left > 0:
                out.append(tuple(example.input_ids[:left]))
                left -= len(out[-1])
    return tuple(out)


def run_text(
    record: RunRecord,
    tokenizer: Any,
    *,
    held_out: ClinicalDataset | None,
    calibration: ClinicalDataset | None,
    max_positions: int,
    max_calibration_tokens: int,
) -> RunText:
    """The run's held-out and training records, tokenized as training tokenized them.

    Args:
        record: The run's record (its training config and data fingerprint).
        tokenizer: The training tokenizer.
        held_out: Records to score instead of the run's held-out split.
        calibration: Records to calibrate on instead of the run's training split.
        max_positions: Reply positions to score at most.
        max_calibration_tokens: Calibration tokens at most.

    When the run's records cannot be rebuilt from its config (it was given in-memory datasets,
    or the file changed since: the training fingerprint differs), the embedded synthetic
    records stand in, with a warning; pass ``held_out``/``calibration`` to choose.
    """
    held: ClinicalDataset | None
    if held_out is not None and calibration is not None:  # nothing of the run's is needed
        max_seq_len, train, held, origin = record.max_seq_len, calibration, held_out, "given"
    else:
        max_seq_len, train, held, origin = _run_splits(record)
    if held_out is not None:
        held, held_name = held_out, "held-out records (given to the exporter)"
    elif held is not None and len(held):
        held_name = f"{origin} held-out records"
    else:
        held, held_name = train, f"{origin} training records (none were held out)"
    train_name = f"{origin} training records"
    if calibration is not None:
        train, train_name = calibration, "calibration records (given to the exporter)"

    return RunText(
        fidelity=FidelityText.from_examples(
            held.tokenize(tokenizer, max_seq_len=max_seq_len),
            max_positions=max_positions,
            source=held_name,
        ),
        calibration=calibration_ids(
            train, tokenizer, max_seq_len=max_seq_len, max_tokens=max_calibration_tokens
        ),
        calibration_source=train_name,
    )


def _run_splits(
    record: RunRecord,
) -> tuple[int, ClinicalDataset, ClinicalDataset | None, str]:
    """``max_seq_len``, training and held-out records of the run (or of the embedded set) and
    whose they are."""
    from medlora._errors import MedLoraError

    try:
        data = record.rebuild()
    except (MedLoraError, OSError, TypeError) as exc:
        reason = f"its config does not rebuild them ({exc})"
    else:
        if data.train.fingerprint == record.data_fingerprint:
            train = data.train
            if isinstance(train, ArrowDataset):  # data on disk: calibrate on its first records
                train = train.head(CALIBRATION_RECORDS)
            return record.max_seq_len, train, data.held_out, "the run's"
        reason = "they differ from what it trained on (in-memory datasets, or a changed file)"
    warnings.warn(
        f"export fidelity: the run's records cannot be rebuilt: {reason}; measuring on the "
        "embedded synthetic records instead (pass held_out= and calibration= to "
        "AdapterExporter to choose)",
        stacklevel=5,
    )
    train, held = ClinicalDataset.default().split(test_size=0.1, seed=0)
    return record.max_seq_len, train, held, "embedded synthetic"
