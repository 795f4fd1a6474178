"""The chunked loss equals the full-logits loss, in value and in gradient."""

from __future__ import annotations

import sys
from pathlib import Path

from medlora import LoraConfig, QLoRATrainer, TrainingConfig
from medlora.data import collate
from medlora.training._loss import causal_lm_loss, supervised_tokens

sys.path.insert(0, str(Path(__file__).parent))
from test_loop import small_data


def test_chunked_loss_matches_full_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path,
        max_seq_len=64,
        quantization=None,
        lora=LoraConfig(dropout=0.0),  # the same forward twice: no dropout masks to differ
    )
    trainer = QLoRATrainer(config)
    trainer.setup()
    model = trainer.model
    examples = list(
        small_data(3).prepare(trainer.tokenizer, max_seq_len=config.max_seq_len).examples
    )
    batch = collate(examples, pad_id=trainer.tokenizer.pad_token_id)
    head = model.get_output_embeddings()
    lora = [p for p in model.parameters() if p.requires_grad]

    results = []
    for chunk in (0, 37):  # 37 does not divide the token count: a ragged last chunk
        model.zero_grad()
        loss, n = causal_lm_loss(model, head, batch, chunk_tokens=chunk)
        loss.backward()
        results.append((loss.detach(), n, [p.grad.clone() for p in lora if p.grad is not None]))
    (full, n_full, g_full), (chunked, n_chunked, g_chunked) = results
    assert n_full == n_chunked == supervised_tokens(batch) > 37
    assert torch.allclose(full, chunked, rtol=1e-5), (full.item(), chunked.item())
    assert len(g_full) == len(g_chunked) > 0
    for a, b in zip(g_full, g_chunked, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
