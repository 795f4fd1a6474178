"""The loss: chunked equals full logits equals fused, in value and in gradient."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from medlora import LoraConfig, QLoRATrainer, TrainingConfig
from medlora.data import collate
from medlora.training._loss import causal_lm_loss, supervised_tokens, with_loss_index

if TYPE_CHECKING:
    from conftest import SmallRun


@pytest.fixture(scope="module")
def lora_model(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple:
    config = TrainingConfig(
        model=str(tiny_model_dir),
        output_dir=tmp_path_factory.mktemp("loss"),
        max_seq_len=64,
        quantization=None,
        lora=LoraConfig(lora_dropout=0.0),  # the same forward twice: no dropout masks to differ
    )
    trainer = QLoRATrainer(config)
    trainer.setup()
    examples = list(
        small_run.data(3).prepare(trainer.tokenizer, max_seq_len=config.max_seq_len).examples
    )
    return trainer, collate(examples, pad_id=trainer.tokenizer.pad_token_id)


def loss_and_grads(model: object, batch: dict, **kwargs: object) -> tuple:
    lora = [p for p in model.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    model.zero_grad()  # type: ignore[attr-defined]
    loss, n = causal_lm_loss(model, batch, **kwargs)  # type: ignore[arg-type]
    loss.backward()
    return loss.detach(), n, [p.grad.clone() for p in lora if p.grad is not None]


def test_chunked_loss_matches_full_logits(lora_model: tuple) -> None:
    import torch

    trainer, batch = lora_model
    # 0: one chunk of everything; 37 does not divide the token count: a ragged last chunk.
    full, n_full, g_full = loss_and_grads(trainer.model, batch, chunk_tokens=0)
    chunked, n_chunked, g_chunked = loss_and_grads(trainer.model, batch, chunk_tokens=37)
    assert n_full == n_chunked == supervised_tokens(batch) > 37
    assert torch.allclose(full, chunked, rtol=1e-5), (full.item(), chunked.item())
    assert len(g_full) == len(g_chunked) > 0
    for a, b in zip(g_full, g_chunked, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_loss_matches_chunked_with_one_head_matmul_per_chunk(lora_model: tuple) -> None:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    trainer, batch = lora_model
    ref, n, g_ref = loss_and_grads(trainer.model, batch, chunk_tokens=37, impl="chunked")
    head = trainer.model.get_output_embeddings()
    calls = {"chunked": 0, "fused": 0}
    width = head.weight.shape[0]

    class CountHead(TorchDispatchMode):  # sees backward's recomputation too
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            mm = func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
            if mm and out.dim() == 2 and out.shape[-1] == width:
                calls[self.key] += 1  # a (tokens, vocab) product: the head
            return out

    with CountHead("chunked"):
        loss_and_grads(trainer.model, batch, chunk_tokens=37, impl="chunked")
    with CountHead("fused"):
        fused, n_fused, g_fused = loss_and_grads(
            trainer.model, batch, chunk_tokens=37, impl="fused"
        )
    chunks = -(-n // 37)
    # Measured float32: |fused - chunked| / chunked = 0 to 1e-7, gradients within 1e-6.
    assert n_fused == n and torch.allclose(fused, ref, rtol=1e-5), (fused.item(), ref.item())
    for a, b in zip(g_ref, g_fused, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert calls["fused"] == chunks  # the head's forward matmul, once per chunk
    assert calls["chunked"] == 2 * chunks  # forward and recompute (plus the backward matmul)


def test_loss_index_is_computed_on_the_cpu(lora_model: tuple) -> None:
    _, batch = lora_model
    indexed = with_loss_index(dict(batch))
    assert "labels" not in indexed
    assert indexed["loss_positions"].device.type == "cpu"
    assert indexed["loss_targets"].shape[0] == supervised_tokens(batch)
    width = batch["labels"].shape[1]
    flat = batch["labels"].reshape(-1)
    assert (flat[indexed["loss_positions"] + 1] == indexed["loss_targets"]).all()
    assert (indexed["loss_positions"] % width != width - 1).all()
