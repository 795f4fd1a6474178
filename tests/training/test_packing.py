"""Packed training: the same loss as padded batches, with far fewer padding tokens."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from medlora import ClinicalDataset, QLoRATrainer, TrainingConfig
from medlora.data import collate, collate_packed
from medlora.training._loss import causal_lm_loss


@pytest.mark.parametrize(
    ("attention", "dense_mask"),
    [("sdpa", False), ("eager", False), ("sdpa", True)],
    ids=["sdpa-position-ids", "eager-position-ids", "sdpa-dense-mask"],
)
def test_packed_batch_has_the_same_loss_as_padded(
    tiny_model_dir: Path, tmp_path: Path, attention: str, dense_mask: bool
) -> None:
    import torch

    config = TrainingConfig(
        model=str(tiny_model_dir), output_dir=tmp_path, attn_implementation=attention
    )
    trainer = QLoRATrainer(config)
    trainer.setup()
    examples = ClinicalDataset.default().tokenize(trainer.tokenizer, max_seq_len=1024)[:3]
    assert all(any(label != -100 for label in e.labels) for e in examples)
    pad = trainer.tokenizer.pad_token_id
    packed_batch = collate_packed([examples], pad_id=pad, dense_mask=dense_mask)
    assert ("attention_mask" in packed_batch) is dense_mask
    with torch.no_grad():
        padded, n_padded = causal_lm_loss(
            trainer.objective, collate(examples, pad_id=pad), chunk_tokens=0
        )
        packed, n_packed = causal_lm_loss(trainer.objective, packed_batch, chunk_tokens=0)
        # Negative control: the same packed row read as one sequence (positions 0..L-1, no
        # mask): later examples attend to earlier ones and the loss changes.
        leaky_batch = {k: v for k, v in packed_batch.items() if k != "attention_mask"}
        leaky_batch["position_ids"] = torch.arange(packed_batch["input_ids"].shape[1])[None]
        leaky, _ = causal_lm_loss(trainer.objective, leaky_batch, chunk_tokens=0)
    assert n_packed == n_padded
    # Only float32 summation order differs between the two layouts.
    assert abs(float(packed) - float(padded)) < 1e-4 * float(padded)
    # Measured: leaky differs by 3.5e-3 (relative), 35x the parity tolerance.
    assert abs(float(leaky) - float(padded)) > 1e-3 * float(padded)


def test_packed_run_trains_on_fewer_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path,
        max_steps=6,
        micro_batch_size=2,
        max_seq_len=512,
        learning_rate=3e-3,
        packing=True,
        seed=0,
    )
    trainer = QLoRATrainer(config)
    result = trainer.train(progress=False)
    assert result.final_eval_loss < result.initial_eval_loss
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    examples = ClinicalDataset.default().tokenize(trainer.tokenizer, max_seq_len=512)
    mean = sum(sum(label != -100 for label in e.labels) for e in examples) / len(examples)
    # Each packed row holds several examples: a step's 2 rows carry well over the supervised
    # tokens of 2 average examples (the unpacked micro-batch). Measured: 389 vs 2 x 115.
    assert logs[-1]["tokens"] / 6 > 1.5 * 2 * mean


def test_flash_attention_varlen_arguments_mark_every_example(tiny_model_dir: Path) -> None:
    from medlora._hub import load_tokenizer
    from medlora.training._batches import with_varlen_kwargs

    tokenizer = load_tokenizer(tiny_model_dir)
    prepared = ClinicalDataset.default().prepare(tokenizer, max_seq_len=512, pack=True)
    rows = prepared.rows()[:3]
    batch = with_varlen_kwargs(dict(collate_packed(rows, pad_id=tokenizer.pad_token_id)))
    width = batch["input_ids"].shape[1]
    bounds, at = [0], 0
    for row in rows:  # every example, then the row's padding as one more sequence
        for example in row:
            at += len(example)
            bounds.append(at)
        if at % width:
            at += width - at % width
            bounds.append(at)
    assert batch["cu_seq_lens_q"].tolist() == bounds == batch["cu_seq_lens_k"].tolist()
    longest = max(b - a for a, b in itertools.pairwise(bounds))
    assert batch["max_length_q"] == batch["max_length_k"] == longest


@pytest.mark.gpu
def test_flash_attention_packed_rows_have_the_padded_loss(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    from medlora.training._batches import to_device, with_varlen_kwargs
    from medlora.training._loss import with_loss_index

    config = TrainingConfig(
        model=str(tiny_model_dir), output_dir=tmp_path, attn_implementation="flash_attention_2"
    )
    trainer = QLoRATrainer(config)
    trainer.setup()
    examples = ClinicalDataset.default().tokenize(trainer.tokenizer, max_seq_len=1024)[:4]
    pad = trainer.tokenizer.pad_token_id
    padded = with_loss_index(dict(collate(examples, pad_id=pad)))
    packed = with_varlen_kwargs(
        with_loss_index(dict(collate_packed([examples[:2], examples[2:]], pad_id=pad)))
    )
    with torch.no_grad():
        a = trainer.objective(**to_device(padded, "cuda"))
        b = trainer.objective(**to_device(packed, "cuda"))
    assert abs(float(a) - float(b)) < 1e-2 * float(a)  # bf16
