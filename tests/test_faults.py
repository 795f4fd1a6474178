"""Fault-injection tier (``pytest -m faults``; ``make test`` runs it).

Real ``medlora train`` and ``medlora export`` processes are SIGKILLed at each named phase
(``MEDLORA_FAULT``, see ``medlora/_fault.py``), the disk fills up half-way through a write, and
after each: every file the run or export exposes loads, resume or re-export gives byte-identical
results, and the artefacts are readable by another user.

The killed processes are forked from a *zygote*: a process that imported torch, transformers,
peft and medlora once and ran nothing (so no thread pool is forked). Each child is a process of
its own running ``medlora.cli.main([...])``, the function behind the ``medlora`` command, with
``MEDLORA_FAULT`` in its environment; it costs one to eight seconds instead of adding the
15-25 s of a fresh interpreter's imports on a busy 2-core machine.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from crash_helpers import COMPLETE as COMPLETE_MARKER
from crash_helpers import assert_readable_by_another_user, leftovers

from medlora.training._checkpoint import checkpoint_dirs

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL

ZYGOTE = r"""
import json, os, sys, traceback
import torch, transformers, peft, accelerate, safetensors  # paid once, before any fork
import medlora.cli, medlora.training._trainer, medlora.export._exporter, medlora.serve._load
from transformers.models.llama import modeling_llama

reply = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(job["env"])
            os.umask(0o022)
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = medlora.cli.main(job["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    reply.write(json.dumps({"rc": rc}) + "\n")
    reply.flush()
"""

if TYPE_CHECKING:
    from conftest import SmallRun


def child_env(fault: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEDLORA_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    if fault:
        env["MEDLORA_FAULT"] = fault
    return env


class Zygote:
    """Forks ``medlora`` CLI runs from one pre-imported process."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.count = logs, 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(None),
        )

    def run(self, *argv: str, fault: str | None = None, timeout: float = 300) -> tuple[int, str]:
        """Run ``medlora ARGV`` in a forked child; its exit code (-9: killed) and output."""
        self.count += 1
        log = self.logs / f"{self.count:02d}-{argv[0]}-{fault or 'no-fault'}.log"
        job = {"argv": list(argv), "env": child_env(fault), "log": str(log)}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"medlora {' '.join(argv)} did not finish in {timeout} s"
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return rc, log.read_text()

    def close(self) -> None:
        self.proc.kill()  # nothing to finish: each run ended before its reply
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("fault-logs"))
    yield z
    z.close()


def short_records(n: int = 12) -> str:
    lines = []
    for i in range(n):
        user = f"Patient {i} reports fever for {i + 1} days. Summarise."
        reply = f"Fever for {i + 1} days; examine and review in one week."
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        lines.append(json.dumps({"messages": messages}) + "\n")
    return "".join(lines)


@pytest.fixture(scope="module")
def configs(
    small_run: SmallRun,
    tmp_path_factory: pytest.TempPathFactory,
    random_model_dir: Path,
) -> Any:
    """Writes config files; ``train_config(out)`` and ``export_config`` are their paths."""
    from medlora import ExportConfig

    root = tmp_path_factory.mktemp("fault-configs")
    (root / "data.jsonl").write_text(short_records())
    base = small_run.config(
        random_model_dir,
        root / "unused",
        data=str(root / "data.jsonl"),
        max_steps=6,
        save_every=2,
        keep_checkpoints=1,
    )

    class Configs:
        export_config = root / "export.json"
        training = base

        @staticmethod
        def train_config(out: Path) -> str:
            path = root / f"{out.name}.json"
            data = base.to_dict() | {"output_dir": str(out)}
            path.write_text(json.dumps(data, default=str))
            return str(path)

    export = ExportConfig(formats=("adapter", "merged"), merge_strategy="nf4-roundtrip")
    Configs.export_config.write_text(json.dumps(export.to_dict()))
    return Configs


@pytest.fixture(scope="module")
def reference_run(zygote: Zygote, configs: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every killed one must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference") / "run"
    rc, log = zygote.run("train", configs.train_config(out))
    assert rc == 0, log
    return out


# --- what "every exposed file loads" means ------------------------------------------------


def exposed_files(root: Path) -> list[Path]:
    """Files a reader opens: none inside or named as a hidden temporary/marker entry."""
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def assert_every_exposed_file_loads(root: Path) -> None:
    import sentencepiece
    import torch
    from safetensors.torch import load_file

    for path in exposed_files(root):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
            assert steps == sorted(set(steps)), f"{path}: duplicate or unordered steps {steps}"
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=False)
        elif path.name == "tokenizer.model":
            sentencepiece.SentencePieceProcessor(model_file=str(path))
        else:
            path.read_bytes()
    if (root / "parity.json").is_file():  # an export: complete, by its marker
        assert COMPLETE_MARKER in os.listdir(root), root
        return
    for directory in [root / "adapter", root / "best-adapter", *checkpoint_dirs(root)]:
        if directory.is_dir():  # a run's directories likewise
            assert COMPLETE_MARKER in os.listdir(directory), directory


def weights(directory: Path) -> dict[str, bytes]:
    """The model files of a directory tree, by relative path (what must be byte-identical)."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in exposed_files(directory)
        if p.suffix in (".safetensors", ".model") or p.name.endswith("config.json")
    }


def log_losses(run: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"])
        for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
    ]


# --- training ---------------------------------------------------------------------------


def test_training_killed_at_every_phase_resumes_byte_identical(
    zygote: Zygote, configs: Any, reference_run: Path, tmp_path: Path
) -> None:
    import medlora

    run = tmp_path / "run"
    config = configs.train_config(run)
    ckpts = run / "checkpoints"
    expected = weights(reference_run / "adapter")

    # 1. Half-way through writing the second checkpoint.
    rc, log = zygote.run("train", config, fault="checkpoint-write:step-0000004")
    assert rc == KILLED, log
    assert [p.name for p in ckpts.iterdir() if not p.name.startswith(".")] == ["step-0000002"]
    assert [n.split(".")[1] for n in leftovers(ckpts)] == ["step-0000004"]
    assert_every_exposed_file_loads(run)

    # 2. Half-way through pruning step 2 after step 4 was saved; the partial of 1. is gone.
    rc, log = zygote.run("train", config, "--resume", fault="remove-midway:step-0000002")
    assert rc == KILLED, log
    assert leftovers(ckpts) == []
    assert COMPLETE_MARKER not in os.listdir(ckpts / "step-0000002")  # half deleted
    assert checkpoint_dirs(run) == [ckpts / "step-0000004"]
    assert_every_exposed_file_loads(run)

    # 3. Half-way through writing the final adapter, after the last checkpoint.
    rc, log = zygote.run("train", config, "--resume", fault="adapter-write:adapter")
    assert rc == KILLED, log
    assert [p.name for p in ckpts.iterdir()] == ["step-0000006"]  # half-pruned step 2 went
    assert not (run / "adapter").exists() and len(leftovers(run)) == 1
    assert_every_exposed_file_loads(run)
    unfinished = leftovers(run)

    # 4. The final adapter complete but not yet in place: no adapter/ at all (the unfinished
    #    one of 3. is gone). medlora.load notices, restores it and says so.
    rc, log = zygote.run("train", config, "--resume", fault="dir-complete:adapter")
    assert rc == KILLED, log
    assert not (run / "adapter").exists()
    assert len(leftovers(run)) == 1 and leftovers(run) != unfinished
    assert_every_exposed_file_loads(run)
    medlora.load(run / "adapter")
    assert weights(run / "adapter") == expected

    # 5. Over an existing adapter/: swapped in (renameat2), the previous one not yet removed.
    rc, log = zygote.run("train", config, "--resume", fault="swap-done:adapter")
    assert rc == KILLED, log
    assert len(leftovers(run)) == 1 and weights(run / "adapter") == expected
    assert_every_exposed_file_loads(run)

    # 6. Uninterrupted: nothing left over, and the same bytes and log as never killed.
    rc, log = zygote.run("train", config, "--resume")
    assert rc == 0 and "resumed from step 6" in log, log
    assert leftovers(run) == [] and leftovers(ckpts) == []
    assert weights(run / "adapter") == expected
    assert log_losses(run) == log_losses(reference_run)
    assert_every_exposed_file_loads(run)


# --- export -----------------------------------------------------------------------------


def test_export_killed_at_every_phase_reexports_byte_identical(
    zygote: Zygote, configs: Any, reference_run: Path, tmp_path: Path
) -> None:
    import medlora

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    out = tmp_path / "exports" / "exp"
    export = ("export", str(run), "--out", str(out), "--config", str(configs.export_config))
    expected_adapter = weights(reference_run / "adapter")

    # 0. A re-run of the finished training killed between the two renames of the fallback
    #    swap: adapter/ is gone, the previous one is an .old and the new one a complete .partial.
    rc, log = zygote.run(
        "train", configs.train_config(run), "--resume", fault="no-exchange,swap-midway:adapter"
    )
    assert rc == KILLED, log
    assert not (run / "adapter").exists()
    assert sorted(n.rsplit(".", 1)[1] for n in leftovers(run)) == ["old", "partial"]

    # 1. The export restores the run's adapter (one line says so), then is killed half-way.
    rc, log = zygote.run(*export, fault="export-write:exp")
    assert rc == KILLED, log
    assert "restored" in log and weights(run / "adapter") == expected_adapter
    assert leftovers(run) == []
    assert not out.exists() and len(leftovers(out.parent)) == 1

    # 2. Uninterrupted: the killed export's partial is removed.
    rc, log = zygote.run(*export)
    assert rc == 0, log
    assert leftovers(out.parent) == []
    assert_every_exposed_file_loads(out)
    expected = weights(out)
    assert weights(out / "adapter") == expected_adapter

    # 3. Killed between the fallback swap's two renames: medlora.load restores the export.
    rc, log = zygote.run(*export, fault="no-exchange,swap-midway:exp")
    assert rc == KILLED, log
    assert not out.exists()
    medlora.load(out / "merged")
    assert weights(out) == expected
    assert_every_exposed_file_loads(out)

    # Every artefact, run and export, is readable by a serving account of another user.
    assert_readable_by_another_user(run)
    assert_readable_by_another_user(out)


# --- a full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts tmpfs file systems of a given size (root only; skips elsewhere)."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(disk: Path, *, leave: int) -> Path:
    """Take all but ``leave`` bytes of ``disk`` with one file."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle:
        while True:  # a writer may take some of the space between measuring and allocating
            try:
                os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(disk).free - leave)
                return ballast
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


class FillAfterStep:
    def __init__(self, disk: Path, step: int, leave: int) -> None:
        self.disk, self.step, self.leave = disk, step, leave

    def on_save(self, step: int, path: Path) -> None:
        if step == self.step:
            fill(self.disk, leave=self.leave)


def test_full_disk_during_a_checkpoint_is_a_training_error(
    small_disk: Callable[[int], Path], configs: Any, reference_run: Path
) -> None:
    """A full disk during training: a raw ``OSError: [Errno 28]`` traceback before."""
    import attrs

    from medlora import QLoRATrainer, TrainingError

    disk = small_disk(16_000_000)
    run = disk / "run"
    config = attrs.evolve(configs.training, output_dir=run)
    trainer = QLoRATrainer(config, callbacks=[FillAfterStep(disk, step=2, leave=200_000)])
    with pytest.raises(TrainingError) as info:
        trainer.train(progress=False)
    message = str(info.value)
    assert message.startswith(f"not enough disk space in {run / 'checkpoints'}: step-0000004")
    assert " MB, " in message and " kB free" in message and "0.0 GB" not in message
    assert leftovers(run) == [] and leftovers(run / "checkpoints") == []
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000002"]
    assert_every_exposed_file_loads(run)

    (disk / "ballast").unlink()
    result = QLoRATrainer(config).train(progress=False, resume=True)
    assert result.resumed_from_step == 2
    assert weights(run / "adapter") == weights(reference_run / "adapter")


def test_full_disk_during_an_export_is_an_export_error(
    small_disk: Callable[[int], Path], reference_run: Path
) -> None:
    """A full disk during export: '0.0 GB' from the pre-check, a raw traceback mid-write
    before."""
    from medlora import AdapterExporter, ExportConfig, ExportError

    tiny = small_disk(4_000_000)  # the pre-check refuses before writing anything
    with pytest.raises(ExportError) as info:
        AdapterExporter(reference_run, ExportConfig(formats=("adapter",))).export(tiny / "exp")
    assert re.fullmatch(
        rf"only \d\.\d MB free under {tiny}, the export needs about \d+\.\d MB; .*",
        str(info.value),
    ), str(info.value)
    assert list(tiny.iterdir()) == []

    disk = small_disk(40_000_000)
    out = disk / "exp"
    AdapterExporter(reference_run, ExportConfig(formats=("adapter",))).export(out)
    before = weights(out)

    def fill_once_started() -> None:
        deadline = time.monotonic() + 120
        while not list(disk.glob(".exp.*.partial")) and time.monotonic() < deadline:
            time.sleep(0.005)
        fill(disk, leave=4096)

    filler = threading.Thread(target=fill_once_started)
    filler.start()
    try:
        with pytest.raises(ExportError) as info:
            AdapterExporter(reference_run, ExportConfig(formats=("adapter", "merged"))).export(out)
    finally:
        filler.join()
    message = str(info.value)
    assert message.startswith(f"not enough disk space in {disk}: exp needs about "), message
    assert " MB, " in message and "a previous export is intact" in message
    assert leftovers(disk) == [] and weights(out) == before
