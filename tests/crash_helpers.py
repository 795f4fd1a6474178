"""What a killed writer leaves on disk, and how artefacts must look to another user.

The names are medlora's documented on-disk contract (docs/guides/crash-safety.md), spelled out
here rather than imported, so these tests also run against code that predates them.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

COMPLETE = ".medlora-complete"
PARTIAL = ".medlora-partial"
DEAD = 4_194_305  # above the largest pid Linux hands out (pid_max <= 2**22): never alive
NOBODY = 65534


def leftover(
    parent: Path,
    name: str,
    kind: str,
    *,
    pid: int = DEAD,
    token: str = "0badc0de",
    complete: bool = True,
    content: str = "",
) -> Path:
    """A directory as a killed writer leaves it: ``.NAME.PID.TOKEN.KIND`` with its marker."""
    path = parent / f".{name}.{pid}.{token}.{kind}"
    path.mkdir()
    (path / "weights.txt").write_text(content)
    (path / (COMPLETE if complete else PARTIAL)).write_text(f"{pid}\n")
    return path


def leftovers(directory: Path) -> list[str]:
    """Hidden entries of ``directory`` other than its completion marker."""
    return sorted(
        p.name for p in directory.iterdir() if p.name.startswith(".") and p.name != COMPLETE
    )


def assert_readable_by_another_user(root: Path) -> None:
    """Modes follow umask 022 (0755/0644), and uid/gid 65534 (nobody) reads every file."""
    for path in [root, *root.rglob("*")]:
        want = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))
    if os.geteuid() != 0:
        return
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    read = subprocess.run(  # relative paths: the pytest temp dirs above root are 0700
        ["cat", "--", *files],
        cwd=root,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert read.returncode == 0, f"uid {NOBODY} cannot read everything in {root}: {read.stderr}"
