"""The causal LM and its loss as one module, so DDP and FSDP wrap the head too.

Imported only once training starts (it needs torch at import time). The loss is the summed
next-token cross-entropy over the supervised positions of a batch, which the batch names up
front (``loss_positions``, ``loss_targets``, computed on the CPU): no boolean indexing, no
count read back from the device. Two ways to apply the head:

- ``chunked``: head + cross-entropy per ``chunk_tokens`` positions under activation
  checkpointing; least memory, but the head runs three times per chunk (forward, recompute,
  backward).
- ``fused``: the head runs once per chunk in the compute dtype, the loss reduces in float32,
  and the gradient of the hidden states (``(softmax - onehot) @ W``) is formed right away
  and kept for backward: two matmuls per chunk instead of three, no recompute.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``target``, chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        n = hidden.shape[0]
        chunk = chunk if chunk > 0 else max(n, 1)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        w = weight
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].to(w.dtype)  # (chunk, hidden)
            t = target[start : start + chunk]
            logits = (h @ w.t()).float()  # (chunk, vocab): the head's only matmul
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if want_h or want_w:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                g = probs.to(w.dtype)  # d loss / d logits
                if want_h:
                    grad_h[start : start + chunk] = g @ w
                if want_w:
                    grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        dh = None if grad_h is None else (grad_h * grad_out).to(ctx.dtypes[0])
        dw = None if grad_w is None else (grad_w * grad_out).to(ctx.dtypes[1])
        return dh, dw, None, None


def _chunk_ce(head: Any, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # (chunk, vocab)
    return torch.nn.functional.cross_entropy(logits, target, reduction="sum")


def chunked_cross_entropy(
    head: Any, hidden: torch.Tensor, target: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)``, ``chunk`` rows at a time, each chunk under
    activation checkpointing while gradients are on (its logits are never kept)."""
    from torch.utils.checkpoint import checkpoint

    n = hidden.shape[0]
    chunk = chunk if chunk > 0 else max(n, 1)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        if torch.is_grad_enabled():
            loss = loss + checkpoint(
                _chunk_ce, head, hidden[part], target[part], use_reentrant=False
            )
        else:
            loss = loss + _chunk_ce(head, hidden[part], target[part])
    return loss


class CausalLMLoss(torch.nn.Module):
    """``forward(batch) -> summed loss`` (float32) for a (peft-wrapped) Llama causal LM.

    The decoder, the head and the loss all run inside this module's forward, so a DDP- or
    FSDP-wrapped ``CausalLMLoss`` gathers and synchronizes the head like every other layer.
    """

    def __init__(self, lm: Any, *, impl: str, chunk_tokens: int, precision: Any = None) -> None:
        super().__init__()
        self.lm = lm
        self.impl, self.chunk_tokens = impl, chunk_tokens
        self.autocast_dtype = (
            precision.dtype if precision is not None and precision.autocast else None
        )

    def base(self) -> Any:
        """The transformers ``*ForCausalLM`` inside the peft wrapper."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(
        self,
        input_ids: torch.Tensor,
        loss_positions: torch.Tensor,
        loss_targets: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **attention_kwargs: Any,
    ) -> torch.Tensor:
        """Summed cross-entropy (float32) of the supervised positions; ``attention_kwargs``
        (FlashAttention's ``cu_seq_lens_*``, ``max_length_*``) go to the attention layers."""
        enabled = self.autocast_dtype is not None
        with torch.autocast(
            input_ids.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled
        ):
            base = self.base()
            out = base.model(  # no KV cache: with one, transformers ignores packed position_ids
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                **attention_kwargs,
            )
            states = out.last_hidden_state  # (batch, seq, hidden), after the final norm
            hidden = states.reshape(-1, states.shape[-1]).index_select(0, loss_positions)
            head = base.get_output_embeddings()
            if self.impl == "fused" and isinstance(head, torch.nn.Linear) and head.bias is None:
                loss: torch.Tensor = FusedLinearCrossEntropy.apply(
                    hidden, head.weight, loss_targets, self.chunk_tokens
                )
                return loss
            return chunked_cross_entropy(head, hidden, loss_targets, self.chunk_tokens)
