"""Model setup: one compute dtype end to end, and the gradient-checkpointing estimate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from medlora import ConfigError, LoraConfig, QLoRATrainer
from medlora.data import collate
from medlora.training._loss import causal_lm_loss, with_loss_index
from medlora.training._model import activation_bytes, decide_checkpointing

MATMULS = ("mm", "addmm", "bmm", "baddbmm")

if TYPE_CHECKING:
    from conftest import SmallRun


@pytest.fixture
def setup_trainer(small_run: SmallRun) -> Callable[..., QLoRATrainer]:
    """A trainer on ``small_run.data()`` with its model set up (``small_run.config``)."""

    def setup(model_dir: Path, out: Path, **changes: Any) -> QLoRATrainer:
        trainer = QLoRATrainer(
            small_run.config(model_dir, out, **changes), train_dataset=small_run.data()
        )
        trainer.setup()
        return trainer

    return setup


@pytest.mark.parametrize("loss_impl", ["chunked", "fused"])
def test_bf16_runs_every_linear_and_matmul_in_bf16(
    setup_trainer: Callable[..., QLoRATrainer], tiny_model_dir: Path, tmp_path: Path, loss_impl: str
) -> None:
    import bitsandbytes as bnb
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    trainer = setup_trainer(
        tiny_model_dir,
        tmp_path,
        mixed_precision="bf16",
        max_steps=1,
        warmup_steps=0,
        loss_impl=loss_impl,
    )
    bf16 = torch.bfloat16
    for name, param in trainer.model.named_parameters():
        if not isinstance(param, bnb.nn.Params4bit):  # LoRA, norms, embeddings, head
            assert param.dtype == bf16, name
    linears: list[tuple[str, Any, Any]] = []

    def record(name: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            linears.append((name, args[0].dtype, output.dtype))

        return hook

    for name, module in trainer.model.named_modules():
        if isinstance(module, torch.nn.Linear):  # Linear4bit, lora_A/B, lm_head
            module.register_forward_hook(record(name))
    matmuls: list[tuple[str, Any]] = []
    losses: list[Any] = []
    trainer.objective.register_forward_hook(lambda m, a, out: losses.append(out.dtype))

    class Matmuls(TorchDispatchMode):  # forward, backward and recomputation alike
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = func.overloadpacket.__name__
            if name in MATMULS:
                matmuls.append((name, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
            elif "scaled_dot_product" in name and not name.endswith("backward"):
                matmuls.append((name, {a.dtype for a in args[:3]}))  # q, k, v
            return func(*args, **(kwargs or {}))

    with Matmuls():
        trainer.train(progress=False)
    assert losses == [torch.float32]  # the loss reduces in float32
    lora = [x for x in linears if "lora_" in x[0]]
    base4 = [x for x in linears if x[0].endswith("proj") or x[0].endswith("base_layer")]
    assert len(lora) == 2 * 14 and len(base4) == 14  # 2 layers x 7 projections, one forward
    wrong = [x for x in linears if x[1] != bf16 or x[2] != bf16]
    assert not wrong, wrong  # every linear (head included when called as one) reads/writes bf16
    assert any("scaled_dot_product" in n for n, _ in matmuls)
    assert sum(n in MATMULS for n, _ in matmuls) > 3 * 28  # forward and backward products
    assert all(dtypes == {bf16} for _, dtypes in matmuls), {n: d for n, d in matmuls if d != {bf16}}


def test_cpu_default_stays_float32(
    setup_trainer: Callable[..., QLoRATrainer], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    trainer = setup_trainer(tiny_model_dir, tmp_path)
    assert trainer.runtime["mixed_precision"] == "no"
    floating = [p for p in trainer.model.parameters() if p.dtype.is_floating_point]
    assert {p.dtype for p in floating if p.requires_grad} == {torch.float32}
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as info:
        setup_trainer(tiny_model_dir, tmp_path, mixed_precision="fp16")
    assert info.value.field == "mixed_precision"


def test_bf16_loss_and_gradients_match_float32(
    setup_trainer: Callable[..., QLoRATrainer],
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    import torch

    results = []
    for precision in ("no", "bf16"):
        trainer = setup_trainer(
            tiny_model_dir, tmp_path, mixed_precision=precision, lora=LoraConfig(lora_dropout=0.0)
        )
        with torch.no_grad():  # a non-zero adapter, the same in both runs
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.full_like(p, 0.01))
        examples = list(small_run.data(4).prepare(trainer.tokenizer, max_seq_len=64).examples)
        batch = with_loss_index(dict(collate(examples, pad_id=trainer.tokenizer.pad_token_id)))
        loss, n = causal_lm_loss(trainer.objective, batch, chunk_tokens=0)
        loss.backward()
        grads = torch.cat(
            [p.grad.float().reshape(-1) for p in trainer.model.parameters() if p.requires_grad]
        )
        results.append((float(loss.detach()) / n, grads))
    (fp32, g32), (bf16, g16) = results
    cosine = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    print(f"mean loss fp32 {fp32:.5f} bf16 {bf16:.5f}; gradient cosine {cosine:.5f}")
    # Tolerance: 1% of the loss (bf16 keeps 8 bits of mantissa); measured 0.06% and 0.9991.
    assert abs(bf16 - fp32) < 0.01 * fp32
    assert cosine > 0.99


def test_checkpointing_estimate_matches_saved_activations(
    setup_trainer: Callable[..., QLoRATrainer], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    trainer = setup_trainer(tiny_model_dir, tmp_path, mixed_precision="bf16")
    params = {p.data_ptr() for p in trainer.model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: Any) -> Any:
        if t.data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch, width = 4, 128
    ids = torch.randint(3, 1000, (batch, width))
    positions = torch.arange(batch * width // 2)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        trainer.objective(
            input_ids=ids, loss_positions=positions, loss_targets=ids.reshape(-1)[positions + 1]
        )
    estimate = activation_bytes(trainer.model.config, batch * width, dtype_bytes=2)
    ratio = sum(saved.values()) / estimate
    print(f"saved {sum(saved.values())} B, estimated {estimate} B, ratio {ratio:.2f}")
    assert 0.6 < ratio < 1.0  # measured 0.88: the estimate errs towards checkpointing

    class Shape:
        hidden_size, intermediate_size, num_hidden_layers = 2048, 5632, 22  # TinyLlama

    on, why = decide_checkpointing(
        "auto", Shape, tokens=4 * 2048, dtype=torch.bfloat16, device=torch.device("cpu")
    )
    assert not on and "CPU" in why
    assert decide_checkpointing("on", Shape, tokens=1, dtype=torch.bfloat16, device="cpu")[0]
    assert trainer.runtime["gradient_checkpointing"] is False
    assert "auto" in trainer.runtime["gradient_checkpointing_reason"]


@pytest.mark.gpu
def test_checkpointing_auto_on_gpu_follows_free_memory() -> None:
    import torch

    class Shape:
        hidden_size, intermediate_size, num_hidden_layers = 2048, 5632, 22  # TinyLlama

    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    small = decide_checkpointing("auto", Shape, tokens=2048, dtype=torch.bfloat16, device=device)
    huge = decide_checkpointing(
        "auto", Shape, tokens=int(free // 1000), dtype=torch.bfloat16, device=device
    )
    assert small[0] is False and huge[0] is True, (small, huge)
