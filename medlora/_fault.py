"""A test-only kill switch for the fault-injection tests (``pytest -m faults``).

``MEDLORA_FAULT`` holds comma-separated items. An item ``PHASE`` or ``PHASE:NAME`` makes the
process SIGKILL itself (no clean-up handler runs) when it reaches that phase, for any target or
only for the target called ``NAME`` (``adapter``, ``step-0000004``, the export directory's
name). The item ``no-exchange`` makes directory swaps take the two-rename fallback.

Phases: ``checkpoint-write``, ``adapter-write``, ``export-write`` (half-way through writing
that directory's files); ``dir-complete`` (completion marker written, not yet swapped in);
``swap-midway`` (between the two renames of the fallback swap); ``swap-done`` (swapped in,
previous directory not yet removed); ``remove-midway`` (half-way through deleting a directory:
an old checkpoint, a previous final directory).

Unset, as it always is outside those tests, a phase costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

_VARIABLE = "MEDLORA_FAULT"


def _items() -> list[str]:
    return os.environ.get(_VARIABLE, "").split(",")


def fault_point(phase: str, name: str = "") -> None:
    """SIGKILL this process if ``MEDLORA_FAULT`` names ``phase`` (or ``phase:name``)."""
    items = _items()
    if phase in items or f"{phase}:{name}" in items:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_flag(flag: str) -> bool:
    """Whether ``MEDLORA_FAULT`` holds the item ``flag`` (e.g. ``no-exchange``)."""
    return flag in _items()
