"""FSDP2 + QLoRA: sharded over two processes (gloo on CPU), the same run as one process.

``fully_shard`` runs on CPU with gloo in torch >= 2.6, so the sharding, the gathered saves and
the global gradient norm are proven here; the GPU test runs the same script on the CUDA path
(bf16 storage of the 4-bit weights, NCCL) on every GPU the machine has.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from medlora import LoraConfig, QLoRATrainer, TrainingConfig

SCRIPT = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from medlora import ClinicalDataset, QLoRATrainer, TrainingConfig

config = TrainingConfig.from_file(sys.argv[1])
data = json.loads(Path(sys.argv[2]).read_text())
train, held_out = (ClinicalDataset.from_records(data[k]) for k in ("train", "eval"))
trainer = QLoRATrainer(config, train_dataset=train, eval_dataset=held_out)
trainer.train(progress=False)
shards = {
    name: [list(p.to_local().shape), list(p.shape), str(p.dtype)]
    for name, p in trainer.model.named_parameters()
    if hasattr(p, "to_local")
}
(config.output_dir / f"shards-{dist.get_rank()}.json").write_text(json.dumps(shards))
"""

if TYPE_CHECKING:
    from conftest import SmallRun


@pytest.fixture
def fsdp_config(small_run: SmallRun) -> Callable[..., TrainingConfig]:
    """``small_run.config`` for a 4-step FSDP run that evaluates and saves every 2 steps."""

    def make(model_dir: Path, out: Path, **changes: Any) -> TrainingConfig:
        return small_run.config(
            model_dir,
            out,
            lora=LoraConfig(lora_dropout=0.0),  # each process draws its own dropout masks
            max_steps=4,
            lr_scheduler="constant",  # a resumed run with more steps keeps the same schedule
            eval_every=2,
            save_every=2,
            fsdp=True,
            **changes,
        )

    return make


def test_fsdp_two_processes_shard_resume_and_match_one_process(
    fsdp_config: Callable[..., TrainingConfig],
    small_run: SmallRun,
    launch: Callable[..., None],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    # 4 sharded steps, then resumed from the step-4 checkpoint (gathered adapter and
    # optimizer state) for 2 more; against 6 straight steps of one unsharded process.
    fsdp = fsdp_config(tiny_model_dir, tmp_path / "fsdp")
    (tmp_path / "fsdp.json").write_text(json.dumps(fsdp.to_dict(), default=str))
    resumed = attrs.evolve(fsdp, max_steps=6, resume=True)
    (tmp_path / "resumed.json").write_text(json.dumps(resumed.to_dict(), default=str))
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    launch(tmp_path / "train.py", tmp_path / "fsdp.json", processes=2)
    run = tmp_path / "fsdp"
    ranks = [json.loads((run / f"shards-{r}.json").read_text()) for r in (0, 1)]
    launch(tmp_path / "train.py", tmp_path / "resumed.json", processes=2)

    # Global batch 4: 2 processes x micro-batch 2, sharded, versus 1 unsharded process x 4.
    single_cfg = attrs.evolve(
        fsdp, max_steps=6, micro_batch_size=4, fsdp=False, output_dir=tmp_path / "one"
    )
    single = QLoRATrainer(
        single_cfg, train_dataset=small_run.data(), eval_dataset=small_run.data(5, start=40)
    ).train(progress=False)

    meta = json.loads((run / "medlora.json").read_text())
    assert meta["world_size"] == 2 and meta["runtime"]["fsdp"] is True
    assert meta["metrics"]["resumed_from_step"] == 4
    assert meta["metrics"]["train_tokens"] == single.train_tokens
    # Really sharded: every adapter weight holds part of its rows on each rank, in one dtype.
    lora = {k: v for k, v in ranks[0].items() if "lora_" in k}
    assert len(lora) == 28
    for name, (local, full, dtype) in lora.items():
        other = ranks[1][name][0]
        assert local[0] + other[0] == full[0] and local[0] < full[0], name
        assert dtype == "torch.float32"
    log = [json.loads(line) for line in (run / "log.jsonl").open()]
    one = [json.loads(line) for line in (single.run_dir / "log.jsonl").open()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert [r["loss"] for r in steps] == pytest.approx(list(single.train_losses), abs=1e-4)
    # Clipping saw the global norm, not one shard's.
    norms = [r["grad_norm"] for r in one if "grad_norm" in r]
    assert [r["grad_norm"] for r in steps] == pytest.approx(norms, rel=1e-3)
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert evals == pytest.approx([r["eval_loss"] for r in one if "eval_loss" in r], abs=1e-4)
    # Saved by the main process from the gathered weights: final adapter and checkpoints.
    diff = small_run.max_abs_diff(
        small_run.adapter_weights(run / "adapter"), small_run.adapter_weights(single.adapter_dir)
    )
    assert diff <= 2e-5, diff  # float32 sums in another order
    for step in (2, 4, 6):
        ckpt = run / "checkpoints" / f"step-{step:07d}" / "adapter"
        if ckpt.exists():  # keep_checkpoints: 2
            ref = single.run_dir / "checkpoints" / f"step-{step:07d}" / "adapter"
            assert (
                small_run.max_abs_diff(
                    small_run.adapter_weights(ckpt), small_run.adapter_weights(ref)
                )
                <= 2e-5
            )


@pytest.mark.gpu
def test_fsdp_qlora_on_gpu_trains_and_saves_a_loadable_adapter(
    fsdp_config: Callable[..., TrainingConfig],
    launch: Callable[..., None],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    import torch
    from peft import PeftModel

    from medlora.training._model import load_base_model

    # NCCL takes one process per GPU: on a one-GPU machine this runs unsharded (world 1)
    # but through the same fully_shard path, with bf16 storage of the 4-bit weights.
    n = torch.cuda.device_count()
    config = fsdp_config(tiny_model_dir, tmp_path / "run", gradient_checkpointing="on")
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict(), default=str))
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    launch(tmp_path / "train.py", tmp_path / "config.json", processes=n)
    meta = json.loads((tmp_path / "run" / "medlora.json").read_text())
    assert meta["world_size"] == n and meta["metrics"]["steps"] == 4
    assert meta["runtime"]["fsdp"] is True and meta["runtime"]["mixed_precision"] == "bf16"
    shards = json.loads((tmp_path / "run" / "shards-0.json").read_text())
    assert {dtype for *_, dtype in shards.values()} == {"torch.bfloat16"}  # one dtype per unit
    base = load_base_model(tiny_model_dir, config.quantization)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    assert any("lora_B" in k for k, _ in model.named_parameters())
