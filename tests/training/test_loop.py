"""The loop's contracts: exact resume after SIGKILL, Ctrl-C, early stopping, OOM, optimizer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from medlora import ConfigError, OutOfMemoryError, QLoRATrainer, RunRecord

KILLED_RUN = """
import sys, time
from pathlib import Path
import json
from medlora import ClinicalDataset, QLoRATrainer, TrainingConfig

class StallAfterCheckpoint:
    def on_save(self, step, path):
        Path(sys.argv[2]).write_text(str(step))
        time.sleep(600)  # the test kills this process here

config = TrainingConfig.from_file(sys.argv[1])
data = ClinicalDataset.from_records(json.loads(Path(sys.argv[3]).read_text()))
QLoRATrainer(config, train_dataset=data, callbacks=[StallAfterCheckpoint()]).train(progress=False)
"""

if TYPE_CHECKING:
    from conftest import SmallRun


def test_resume_after_sigkill_gives_identical_weights(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    # LoRA dropout stays at its default 0.05: the restored RNG states make it replay exactly.
    straight = small_run.config(tiny_model_dir, tmp_path / "straight", save_every=10)
    reference = QLoRATrainer(straight, train_dataset=small_run.data()).train(progress=False)

    resumed_cfg = small_run.config(tiny_model_dir, tmp_path / "killed", save_every=10)
    (tmp_path / "killed.json").write_text(json.dumps(resumed_cfg.to_dict(), default=str))
    (tmp_path / "run.py").write_text(textwrap.dedent(KILLED_RUN))
    marker = tmp_path / "checkpoint-landed"
    (tmp_path / "records.json").write_text(json.dumps(small_run.records()))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "run.py"),
            str(tmp_path / "killed.json"),
            str(marker),
            str(tmp_path / "records.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == "10"
    assert not (tmp_path / "killed" / "adapter").exists()  # the killed run never finished

    result = QLoRATrainer(resumed_cfg, train_dataset=small_run.data()).train(
        progress=False, resume=True
    )
    assert result.resumed_from_step == 10 and result.steps == 20
    diff = small_run.max_abs_diff(
        small_run.adapter_weights(reference.adapter_dir),
        small_run.adapter_weights(result.adapter_dir),
    )
    assert diff <= 1e-6, diff
    assert result.train_losses == pytest.approx(reference.train_losses, abs=1e-6)
    steps = [json.loads(line)["step"] for line in (result.run_dir / "log.jsonl").open()]
    assert steps == list(range(1, 21))
    assert [p.name for p in result.checkpoints] == ["step-0000010", "step-0000020"]


def test_load_and_resume_recover_what_killed_runs_left(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Killed writes, training side. A run killed between the two renames of the
    adapter swap leaves no adapter/ (the previous one an ``.old``, the new one a complete
    ``.partial``); killed checkpoint writes and prunes leave a ``.partial`` and a step without
    state.json. Before, medlora.load found no adapter and nothing was ever removed."""
    from crash_helpers import COMPLETE, DEAD, leftover, leftovers  # tests/ (not in subprocesses)

    import medlora

    config = small_run.config(tiny_model_dir, tmp_path, max_steps=2, save_every=2)
    QLoRATrainer(config, train_dataset=small_run.data()).train(progress=False)
    adapter, ckpts = tmp_path / "adapter", tmp_path / "checkpoints"
    expected = small_run.adapter_weights(adapter)
    new = shutil.copytree(adapter, tmp_path / f".adapter.{DEAD}.0badc0de.partial")
    (new / COMPLETE).write_text("")
    old = adapter.rename(tmp_path / f".adapter.{DEAD}.1badc0de.old")
    (old / COMPLETE).write_text("")
    os.utime(old / COMPLETE, ns=(1, 1))  # the previous adapter, completed long before
    leftover(ckpts, "step-0000004", "partial", complete=False)
    (ckpts / "step-0000001" / "adapter").mkdir(parents=True)  # pruning killed half-way
    foreign = [tmp_path / ".notes", tmp_path / ".adapter.x1y2z3.partial", ckpts / "README"]
    for path in foreign:
        path.write_text("not medlora's")

    with caplog.at_level("WARNING", logger="medlora"):
        medlora.load(adapter)  # restores from the newest complete leftover, and says so
    assert [r.getMessage().split(" from ")[0] for r in caplog.records] == [
        f"medlora: restored {adapter}"
    ]
    assert small_run.max_abs_diff(small_run.adapter_weights(adapter), expected) == 0
    assert leftovers(tmp_path) == sorted([old.name, ".adapter.x1y2z3.partial", ".notes"])

    QLoRATrainer(config, train_dataset=small_run.data()).train(progress=False, resume=True)
    assert leftovers(tmp_path) == [".adapter.x1y2z3.partial", ".notes"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["README", "step-0000002"]
    assert all(path.exists() for path in foreign)


def test_run_artefacts_are_readable_by_another_user(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """Permissions: mkdtemp/mkstemp (and safetensors' save_file) wrote 0700/0600, so
    a serving account of another user could not read the adapter or checkpoints."""
    from crash_helpers import assert_readable_by_another_user

    previous = os.umask(0o022)
    try:
        config = small_run.config(tiny_model_dir, tmp_path / "run", max_steps=2, save_every=1)
        QLoRATrainer(config, train_dataset=small_run.data()).train(progress=False)
    finally:
        os.umask(previous)
    assert_readable_by_another_user(tmp_path / "run")


class InterruptAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, step: int, logs: Mapping[str, float]) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    config = small_run.config(tiny_model_dir, tmp_path, max_steps=5, keep_checkpoints=1)
    with pytest.raises(KeyboardInterrupt):
        QLoRATrainer(config, train_dataset=small_run.data(), callbacks=[InterruptAt(3)]).train(
            progress=False
        )
    checkpoint = tmp_path / "checkpoints" / "step-0000003"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 3
    assert not (tmp_path / "adapter").exists()

    result = QLoRATrainer(attrs.evolve(config, resume=True), train_dataset=small_run.data()).train(
        progress=False
    )
    assert result.resumed_from_step == 3 and result.steps == 5 and len(result.train_losses) == 5
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_early_stopping_keeps_the_best_adapter(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    # min_delta is larger than any change, so only the first evaluation counts as better:
    # evaluations at steps 2 and 3 do not improve, patience 2 stops the run after step 3.
    config = small_run.config(
        tiny_model_dir,
        tmp_path / "stopped",
        max_steps=10,
        eval_every=1,
        early_stopping_patience=2,
        early_stopping_min_delta=10.0,
        tensorboard=True,
        plot=True,
    )
    held_out = small_run.data(4, start=40)
    result = QLoRATrainer(config, train_dataset=small_run.data(), eval_dataset=held_out).train(
        progress=False
    )
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    assert result.final_eval_loss == pytest.approx(result.best_eval_loss, abs=1e-6)
    meta = json.loads((result.run_dir / "medlora.json").read_text())
    assert meta["adapter"] == {"source": "best", "step": 1}
    assert meta["metrics"]["stopped_early"] is True and meta["metrics"]["best_step"] == 1
    record = RunRecord.from_dir(result.run_dir)
    assert (record.adapter_source, record.adapter_step) == ("best", 1)
    assert record.held_out_split is not None and record.held_out_split.recipe == "given"
    assert record.eval_records == 4 and record.base_model == result.base_model
    log = [json.loads(line) for line in (result.run_dir / "log.jsonl").open()]
    assert [r["step"] for r in log] == [1, 2, 3] and all("eval_perplexity" in r for r in log)
    assert (result.run_dir / "loss.png").stat().st_size > 1000
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # The kept adapter is the step-1 adapter: a 1-step run with the same seed gives it too.
    # (Evaluations must not change training: bitsandbytes would repack CPU 4-bit weights on
    # the first eval forward and lose gradients afterwards; `again` evaluates, `one` not.)
    one = small_run.config(tiny_model_dir, tmp_path / "one", max_steps=1, warmup_steps=0)
    stopped_first_lr = attrs.evolve(config, warmup_steps=0, output_dir=tmp_path / "again")
    a = QLoRATrainer(one, train_dataset=small_run.data()).train(progress=False)
    b = QLoRATrainer(stopped_first_lr, train_dataset=small_run.data(), eval_dataset=held_out).train(
        progress=False
    )
    assert b.best_step == 1
    assert (
        small_run.max_abs_diff(
            small_run.adapter_weights(a.adapter_dir), small_run.adapter_weights(b.adapter_dir)
        )
        <= 1e-6
    )


def _raise_oom(*args: Any, **kwargs: Any) -> Any:
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_oom_becomes_out_of_memory_error_with_advice(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    trainer = QLoRATrainer(
        small_run.config(tiny_model_dir, tmp_path, max_steps=2), train_dataset=small_run.data()
    )
    trainer.setup()
    monkeypatch.setattr(trainer.objective, "forward", _raise_oom)
    with pytest.raises(OutOfMemoryError, match="lower micro_batch_size") as info:
        trainer.train(progress=False)
    assert isinstance(info.value, MemoryError)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert "gradient_checkpointing: on" in str(info.value) and "max_seq_len" in str(info.value)
    assert not (tmp_path / "adapter").exists()


def test_oom_in_evaluation_and_loading_is_translated_too(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers

    held_out = small_run.data(4, start=40)
    trainer = QLoRATrainer(
        small_run.config(tiny_model_dir, tmp_path, max_steps=2),
        train_dataset=small_run.data(),
        eval_dataset=held_out,
    )
    trainer.setup()
    monkeypatch.setattr(trainer.objective, "forward", _raise_oom)
    with pytest.raises(OutOfMemoryError, match="lower micro_batch_size"):
        trainer.train(progress=False)  # the initial evaluation, before the first step
    examples = list(held_out.prepare(trainer.tokenizer, max_seq_len=64).examples)
    with pytest.raises(OutOfMemoryError, match="lower micro_batch_size"):
        trainer.evaluate(examples)

    # safetensors checkpoints load through LlamaForCausalLM (pread slices), others through Auto
    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained", _raise_oom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _raise_oom)
    with pytest.raises(OutOfMemoryError, match="while loading the base model"):
        QLoRATrainer(small_run.config(tiny_model_dir, tmp_path)).setup()


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_hot_loop_reads_the_device_once_per_logged_step(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    packing: bool,
) -> None:
    import threading

    import torch

    config = small_run.config(
        tiny_model_dir, tmp_path, max_steps=6, log_every=3, grad_accum_steps=2, packing=packing
    )
    trainer = QLoRATrainer(config, train_dataset=small_run.data())
    trainer.setup()
    reads: list[tuple[str, str]] = []
    looping = [True]  # until the loop ends (saving the adapter reads bitsandbytes' state)

    def counter(name: str) -> Any:
        real = getattr(torch.Tensor, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            # torch.optim's CPU AdamW reads its CPU step counters (fused CUDA AdamW does not).
            on_main = threading.current_thread() is threading.main_thread()
            if looping[0] and on_main and not caller.startswith("torch.optim"):
                reads.append((name, caller))
            return real(self, *args, **kwargs)

        return counted

    for name in ("item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counter(name))
    finish = QLoRATrainer._finish

    def stop_counting(self: QLoRATrainer, *args: Any, **kwargs: Any) -> Any:
        looping[0] = False
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(QLoRATrainer, "_finish", stop_counting)
    result = trainer.train(progress=False)
    monkeypatch.undo()
    assert result.steps == 6 and len(result.train_losses) == 6
    # Before: one .item() per micro-batch for its token count and its loss, a .tolist() of
    # the step's counts and an .item() of the step's loss: 10 reads per step here.
    assert len(reads) <= 6 // 3, reads
    logged = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").open()]
    assert logged == [3, 6]


def test_paged_8bit_adamw_on_cpu_is_a_config_error(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    config = small_run.config(tiny_model_dir, tmp_path, optimizer="paged_adamw_8bit")
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as info:
        QLoRATrainer(config, train_dataset=small_run.data()).train(progress=False)
    assert info.value.field == "optimizer"


def test_loop_config_rules(small_run: SmallRun, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set eval_every") as info:
        small_run.config(tiny_model_dir, tmp_path, early_stopping_patience=2)
    assert info.value.field == "early_stopping_patience"
    with pytest.raises(ConfigError):
        small_run.config(tiny_model_dir, tmp_path, optimizer="sgd")


@pytest.mark.gpu
def test_paged_8bit_adamw_trains_on_gpu(
    small_run: SmallRun,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    config = small_run.config(tiny_model_dir, tmp_path, max_steps=4, optimizer="paged_adamw_8bit")
    result = QLoRATrainer(config, train_dataset=small_run.data()).train(progress=False)
    assert result.steps == 4 and all(map(lambda x: x == x, result.train_losses))
