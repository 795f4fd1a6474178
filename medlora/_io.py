"""Crash-consistent writes: no reader sees half a file or directory, no kill leaves a gap.

A file is written beside its target as ``.NAME.PID.TOKEN.partial`` and renamed over it. A
directory is built as ``.NAME.PID.TOKEN.partial/``: its first file is ``.medlora-partial``
(medlora is writing it), its last ``.medlora-complete`` (everything else is on disk). The
complete directory takes the target's place in one ``renameat2(RENAME_EXCHANGE)`` on Linux, or
in two renames where that is missing (target -> ``.NAME.PID.TOKEN.old``, partial -> target).

What a killed writer leaves is resolved by :func:`recover` at the start of the next run, export
or load in that directory: a target missing while a complete ``.partial`` or ``.old`` of a
dead process survives is restored from the newest one, then every leftover of a dead process is
removed. medlora touches only its own names, and a ``.partial`` directory only when it holds a
marker (or nothing); a directory it deletes loses its completion marker first, so a kill
half-way never leaves something that looks complete.

Final files and directories get the modes a plain ``open``/``mkdir`` gives under the umask
(0644/0755 under umask 022), whatever temporary-file helper wrote them: a serving account of
another user can read the artefacts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from medlora._errors import MedLoraError
from medlora._fault import fault_flag, fault_point

logger = logging.getLogger("medlora")

PARTIAL_MARKER = ".medlora-partial"
"""First file of a directory medlora is building; says which process builds it."""
COMPLETE_MARKER = ".medlora-complete"
"""Last file of a directory medlora built: its presence proves the directory complete."""

_LEFTOVER = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.(?P<kind>partial|old)$"
)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_writing: set[str] = set()  # leftover-style names this process is writing right now


def format_size(n_bytes: float) -> str:
    """``n_bytes`` in GB, MB or kB: the largest unit that does not round it to zero."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` comes from ENOSPC (no space left) or EDQUOT (disk quota exceeded).

    Libraries wrap it: safetensors raises ``SafetensorError('... No space left on device (os
    error 28)')``, torch.save a ``RuntimeError`` whose context is the ``OSError``.
    """
    texts = [os.strerror(code) for code in _DISK_FULL]
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        if any(text in str(exc) for text in texts):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_message(directory: Path, what: str, *, need: int, written: int = 0) -> str:
    """'not enough disk space in DIR: WHAT needs about N, F free' (sizes in MB or GB)."""
    free = format_size(shutil.disk_usage(_existing(directory)).free)
    where = f"not enough disk space in {directory}: {what}"
    if need > written:
        return f"{where} needs about {format_size(need)}, {free} free"
    if written:
        return f"{where} needs more than {format_size(written)}, {free} free"
    return f"{where} needs more than the {free} free"


@contextlib.contextmanager
def disk_space(
    error: Callable[[str], BaseException], directory: Path, what: str, *, need: int = 0, hint: str
) -> Iterator[None]:
    """Raise ``error`` (naming the directory, bytes needed and free) for ENOSPC/EDQUOT inside."""
    try:
        yield
    except MedLoraError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise error(f"{disk_full_message(directory, what, need=need)}; {hint}") from exc


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and put back (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _follow_umask(path: Path) -> None:
    """Give ``path`` (and all under it) the mode a plain ``open``/``mkdir`` would have.

    Writers that go through a temporary file (safetensors' ``save_file``, mkstemp) leave
    0600 files; artefacts must be readable by a serving account of another user.
    """
    mask = _umask()

    def fix(item: str, base: int) -> None:
        mode = os.lstat(item).st_mode
        if not stat.S_ISLNK(mode):
            wanted = (0o777 if base == 0o777 or mode & 0o111 else 0o666) & ~mask
            if stat.S_IMODE(mode) != wanted:
                os.chmod(item, wanted)

    fix(str(path), 0o777 if path.is_dir() else 0o666)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            fix(os.path.join(root, name), 0o777)
        for name in files:
            fix(os.path.join(root, name), 0o666)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield an empty file beside ``path`` for a writer that wants a name (a GGUF writer, a
    plot); rename it over ``path`` only on success. Its mode follows the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "partial")
    _writing.add(tmp.name)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        with open(tmp, "rb") as done:
            os.fsync(done.fileno())
        _follow_umask(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _writing.discard(tmp.name)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Write to a temporary file beside ``path``; rename over ``path`` only on success."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all (a full disk leaves no torn line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def tree_size(path: Path) -> int:
    """Bytes in the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a directory medlora finished writing (its marker is there)."""
    return (path / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def atomic_dir(
    path: str | Path,
    *,
    error: Callable[[str], BaseException] | None = None,
    need: int = 0,
    hint: str = "",
) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it into ``path`` only on success.

    A previous directory at ``path`` stays readable under its name until the new one is
    complete, and is removed after the swap. With ``error``, running out of disk space (or
    quota) raises ``error`` naming the directory, the bytes needed (``need``, or at least what
    was written) and the bytes free, followed by ``hint``; nothing partial is left either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path.parent, names={path.name})
    tmp = _sibling(path, "partial")
    _writing.add(tmp.name)
    try:
        os.mkdir(tmp)  # 0777 less the umask, unlike mkdtemp's 0700
        (tmp / PARTIAL_MARKER).write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield tmp
        _follow_umask(tmp)
        _mark_complete(tmp)
        fault_point("dir-complete", path.name)
        previous = _swap_in(tmp, path)
    except BaseException as exc:
        disk_full = not isinstance(exc, MedLoraError) and is_disk_full(exc)
        written = tree_size(tmp) if disk_full else 0
        with contextlib.suppress(OSError):
            remove_dir(tmp)
        if error is not None and disk_full:
            message = disk_full_message(path.parent, path.name, need=need, written=written)
            raise error(f"{message}; {hint}" if hint else message) from exc
        raise
    finally:
        _writing.discard(tmp.name)
    if previous is not None:
        with contextlib.suppress(OSError):
            remove_dir(previous)


def _mark_complete(directory: Path) -> None:
    with open(directory / COMPLETE_MARKER, "w", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        os.fsync(handle.fileno())
    (directory / PARTIAL_MARKER).unlink()
    _fsync_dir(directory)


def _swap_in(tmp: Path, path: Path) -> Path | None:
    """Put the complete ``tmp`` at ``path``; return where the previous directory now is."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        return None
    if _exchange(tmp, path):
        _fsync_dir(path.parent)
        fault_point("swap-done", path.name)
        return tmp
    old = _sibling(path, "old")
    os.rename(path, old)
    fault_point("swap-midway", path.name)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _fsync_dir(path.parent)
    fault_point("swap-done", path.name)
    return old


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2``, or None (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step; False where the OS or filesystem cannot."""
    func = _renameat2()
    if func is None or fault_flag("no-exchange"):
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def remove_dir(path: Path) -> None:
    """Delete a directory so that a kill half-way leaves it marked incomplete, never complete:
    the completion marker goes first (demoted to the partial one), that one last."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    partial = path / PARTIAL_MARKER
    if (path / COMPLETE_MARKER).exists():
        os.replace(path / COMPLETE_MARKER, partial)
    elif not partial.exists():
        with contextlib.suppress(OSError):  # claims the directory; a full disk may refuse
            partial.write_text(f"{os.getpid()}\n", encoding="utf-8")
    for child in os.scandir(path):
        if child.name == PARTIAL_MARKER:
            continue
        if child.is_dir(follow_symlinks=False):
            shutil.rmtree(child.path)
        else:
            os.unlink(child.path)
        fault_point("remove-midway", path.name)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    path.rmdir()


def _alive(pid: int, name: str) -> bool:
    if pid == os.getpid():  # our own, or an earlier process's with the same PID (containers)
        return name in _writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owned(path: Path, kind: str) -> bool:
    """A leftover medlora may delete: a file, an ``.old`` directory (made only by its own
    rename), or a ``.partial`` directory holding a marker or nothing."""
    if path.is_symlink() or not path.is_dir() or kind == "old":
        return True
    return (
        (path / PARTIAL_MARKER).exists()
        or (path / COMPLETE_MARKER).exists()
        or not any(os.scandir(path))
    )


def recover(directory: Path, names: Collection[str] | None = None, *, clean: bool = True) -> None:
    """Resolve what killed writers left in ``directory`` (for ``names``; default all).

    A missing target whose complete ``.partial`` or ``.old`` directory survives is restored
    from the newest one (said in one logged line); then, with ``clean``, every leftover of a
    process that is no longer running is removed. Leftovers of live processes are skipped.
    """
    try:
        entries = [(e.name, _LEFTOVER.match(e.name)) for e in os.scandir(directory)]
    except OSError:  # missing, not a directory, or not ours to read
        return
    groups: dict[str, list[tuple[Path, str]]] = {}
    for entry, match in entries:
        if match is None or (names is not None and match["name"] not in names):
            continue
        if not _alive(int(match["pid"]), entry):
            groups.setdefault(match["name"], []).append((directory / entry, match["kind"]))
    for name, leftovers in groups.items():
        target = directory / name
        complete = [(p, k) for p, k in leftovers if p.is_dir() and is_complete(p)]
        if complete and not os.path.lexists(target):
            newest = max(complete, key=lambda pk: (pk[0] / COMPLETE_MARKER).stat().st_mtime_ns)
            try:
                os.rename(newest[0], target)
            except OSError as exc:
                logger.warning("medlora: %s is missing and cannot be restored: %s", target, exc)
                continue
            _fsync_dir(directory)
            leftovers.remove(newest)
            logger.warning(
                "medlora: restored %s from %s, left complete by an interrupted write",
                target,
                newest[0].name,
            )
        for path, kind in leftovers if clean else ():
            if _owned(path, kind):
                with contextlib.suppress(OSError):
                    remove_dir(path)


def restore(path: str | Path) -> None:
    """Bring back ``path`` (or a missing directory above it) from a complete leftover of an
    interrupted swap; removes nothing."""
    path = Path(path).absolute()
    for level in reversed([path, *path.parents]):
        if os.path.lexists(level):
            continue
        recover(level.parent, names={level.name}, clean=False)
        if not os.path.lexists(level):
            return
