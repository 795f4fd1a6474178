"""Crash-consistent writes (medlora/_io.py): swaps without a gap, recovery, clean-up, modes.

The states a kill leaves are built here by hand, named as the writer names them; the
fault-injection tier (tests/test_faults.py) makes them by killing real processes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest
from crash_helpers import DEAD, leftover

from medlora._io import (
    COMPLETE_MARKER,
    PARTIAL_MARKER,
    atomic_dir,
    atomic_file,
    format_size,
    recover,
    restore,
)


def test_format_size_never_rounds_to_zero() -> None:
    assert format_size(27_292_352) == "27.3 MB"
    assert format_size(3_400_000_000) == "3.4 GB"
    assert format_size(4096) == "4.1 kB"
    assert format_size(12) == "12 bytes"


@pytest.mark.parametrize("no_exchange", [False, True], ids=["renameat2", "two-renames"])
def test_swap_replaces_the_previous_directory(
    tmp_path: Path, no_exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if no_exchange:
        monkeypatch.setenv("MEDLORA_FAULT", "no-exchange")
    target = tmp_path / "adapter"
    for version in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "weights.txt").write_text(version)
            assert (tmp / PARTIAL_MARKER).is_file() and not (tmp / COMPLETE_MARKER).exists()
    assert (target / "weights.txt").read_text() == "two"
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE_MARKER, "weights.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_failed_write_leaves_the_previous_directory(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights.txt").write_text("half")
        raise RuntimeError("boom")
    assert (target / "weights.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_missing_directory_is_restored_from_the_newest_complete_leftover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed between the two renames of the fallback swap, the previous
    directory is ``.adapter.PID.TOKEN.old`` and the new one a complete ``.partial``; medlora
    used to refuse the run. The newest complete one comes back, with one line said."""
    old = leftover(tmp_path, "adapter", "old", content="previous")
    new = leftover(tmp_path, "adapter", "partial", token="1badc0de", content="new")
    os.utime(old / COMPLETE_MARKER, ns=(1, 1))  # completed long before the new one
    with caplog.at_level(logging.WARNING, logger="medlora"):
        recover(tmp_path)
    assert (tmp_path / "adapter" / "weights.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert len(caplog.records) == 1 and new.name in caplog.records[0].getMessage()


def test_restore_brings_back_a_missing_parent_and_removes_nothing(tmp_path: Path) -> None:
    export = leftover(tmp_path, "exp", "partial", content="merged")
    (export / "merged").mkdir()
    stale = leftover(tmp_path, "other", "partial", complete=False)
    restore(tmp_path / "exp" / "merged")
    assert (tmp_path / "exp" / "merged").is_dir()
    assert stale.exists()  # loading never deletes


def test_incomplete_leftovers_are_never_restored(tmp_path: Path) -> None:
    leftover(tmp_path, "adapter", "partial", complete=False)
    recover(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_clean_up_touches_only_what_medlora_made_and_nothing_live(tmp_path: Path) -> None:
    """Leftovers of dead writers go; live writers' and foreign ones stay."""
    (tmp_path / "adapter").mkdir()
    dead = [
        leftover(tmp_path, "adapter", "partial", complete=False),
        leftover(tmp_path, "adapter", "old", token="2badc0de"),
        leftover(tmp_path, "exp", "partial", token="3badc0de"),
    ]
    (tmp_path / f".medlora.json.{DEAD}.4badc0de.partial").write_text("{")
    empty = tmp_path / f".exp.{DEAD}.5badc0de.partial"
    empty.mkdir()
    live = leftover(tmp_path, "adapter", "partial", pid=os.getppid(), complete=False)
    foreign = tmp_path / f".adapter.{DEAD}.6badc0de.partial"  # right name, no marker: not ours
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    other_scheme = tmp_path / ".adapter.x1y2z3.partial"
    other_scheme.mkdir()
    recover(tmp_path)
    assert not any(p.exists() for p in dead) and not empty.exists()
    assert not (tmp_path / f".medlora.json.{DEAD}.4badc0de.partial").exists()
    assert live.exists() and foreign.exists() and other_scheme.exists()


def test_own_pid_leftovers_of_an_earlier_process_are_cleaned(tmp_path: Path) -> None:
    """Containers restart a run under the same PID: only what this process writes now is live."""
    leftover(tmp_path, "adapter", "partial", pid=os.getpid(), complete=False)
    recover(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_new_files_and_directories_follow_the_umask(tmp_path: Path) -> None:
    """Before, mkdtemp/mkstemp and safetensors' save_file made 0700/0600."""
    from safetensors.numpy import save_file

    np = pytest.importorskip("numpy")
    previous = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "adapter") as tmp:
            save_file({"w": np.zeros(4, dtype=np.float32)}, str(tmp / "w.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
        with atomic_file(tmp_path / "medlora.json") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    modes = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in tmp_path.rglob("*")
    }
    assert modes == {
        "adapter": 0o755,
        "adapter/sub": 0o755,
        "adapter/w.safetensors": 0o644,
        f"adapter/{COMPLETE_MARKER}": 0o644,
        "medlora.json": 0o644,
    }


def test_exchange_errors_other_than_unsupported_are_raised(tmp_path: Path) -> None:
    from medlora._io import _exchange

    with pytest.raises(OSError) as info:
        _exchange(tmp_path / "missing-a", tmp_path / "missing-b")
    assert info.value.errno == errno.ENOENT
