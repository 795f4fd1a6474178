"""Packing: best-fit-decreasing bins, and packed logits equal each example run alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlora import ClinicalDataset
from medlora.data import collate_packed, pack_examples

# Measured: max |packed - alone| = 2.9e-6 on the tiny model in float32 (SDPA, CPU).
LOGIT_TOLERANCE = 1e-4


def test_best_fit_decreasing_fills_bins_and_reports_efficiency() -> None:
    bins, report = pack_examples([6, 5, 4, 3, 2, 1, 7], max_seq_len=10)
    sizes = [[6, 5, 4, 3, 2, 1, 7][i] for b in bins for i in b]
    assert sorted(sizes) == [1, 2, 3, 4, 5, 6, 7]
    assert all(sum([6, 5, 4, 3, 2, 1, 7][i] for i in b) <= 10 for b in bins)
    assert report.bins == 3 and report.tokens == 28
    assert report.efficiency == pytest.approx(28 / 30)


@pytest.mark.parametrize("dense_mask", [False, True], ids=["position-ids", "dense-mask"])
def test_packed_example_logits_equal_the_example_alone(
    tiny_model_dir: Path, dense_mask: bool
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    prepared = ClinicalDataset.default().prepare(
        tokenizer, max_seq_len=512, truncation="drop", pack=True
    )
    assert prepared.packing is not None and prepared.packing.efficiency > 0.9
    rows = [r for r in prepared.rows() if len(r) >= 2][:2]
    assert len(rows) == 2
    batch = collate_packed(rows, pad_id=tokenizer.pad_token_id, width=512, dense_mask=dense_mask)
    assert ("attention_mask" in batch) is dense_mask
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        # No KV cache: with one, transformers does not read packed position_ids.
        packed = model(**inputs, use_cache=False).logits
        worst = 0.0
        for r, row in enumerate(rows):
            at = 0
            for example in row:
                ids = torch.tensor([example.input_ids])
                alone = model(input_ids=ids).logits[0]
                got = packed[r, at : at + len(example)]
                worst = max(worst, float((got - alone).abs().max()))
                at += len(example)
    print(f"max |packed - alone| = {worst:.2e}")
    assert worst < LOGIT_TOLERANCE
    # Without the block mask the second example would see the first: the logits differ.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits
    n0 = len(rows[0][0])
    assert float((leaky[0, n0 : n0 + 5] - packed[0, n0 : n0 + 5]).abs().max()) > 1e-2
    # Training loss on a packed batch is finite and uses only supervised labels.
    loss = model(**batch, use_cache=False).loss
    assert torch.isfinite(loss)
