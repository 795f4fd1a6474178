"""Old keyword names kept working for one release: they warn and map onto the new ones.

A class decorated with :func:`accepts_old_keywords` keeps its attrs-generated, typed
``__init__`` (what IDEs and mypy see); a thin wrapper first passes the keywords through an
*upgrade* function that warns about each old name and returns the keywords under the new ones.
:meth:`medlora._config.ConfigBase.from_dict` runs the same upgrade, so old keys in YAML/TOML
config files warn too.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from medlora._errors import ConfigError

C = TypeVar("C", bound=type)

Upgrade = Callable[[Mapping[str, Any], str], dict[str, Any]]
"""``upgrade(keywords, where)``: the keywords under their current names; ``where`` names the
caller (a class, or a config file and section) in the warnings."""

UPGRADE_ATTRIBUTE = "__medlora_upgrade__"


def warn_deprecated(message: str, *, stacklevel: int = 4) -> None:
    """A :class:`DeprecationWarning` pointing at the user's line (through the upgrade and the
    ``__init__`` wrapper)."""
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


def warn_old_attribute(old: str, new: str) -> None:
    """Warn that attribute ``old`` (``"LoraConfig.rank"``) is read; ``new`` says what instead."""
    warn_deprecated(
        f"{old} is deprecated and will be removed in the next release; use {new} instead."
    )


def renamed(**old_to_new: str) -> Upgrade:
    """An upgrade that renames keywords, e.g. ``renamed(rank="r")``; giving both names fails."""

    def upgrade(keywords: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = dict(keywords)
        for old, new in old_to_new.items():
            if old not in out:
                continue
            if new in out:
                raise ConfigError(
                    f"{where}{old} and {new} are the same setting; give only {new!r}.",
                    field=new,
                )
            warn_deprecated(
                f"{where}{old} is deprecated and will be removed in the next release; "
                f"use {new!r} instead."
            )
            out[new] = out.pop(old)
        return out

    return upgrade


def accepts_old_keywords(upgrade: Upgrade) -> Callable[[C], C]:
    """Class decorator: ``__init__`` also takes the old keywords ``upgrade`` knows."""

    def decorate(cls: C) -> C:
        init = cls.__dict__["__init__"]  # the attrs-generated one

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **upgrade(kwargs, f"{cls.__name__}: "))

        cls.__init__ = __init__  # type: ignore[misc]
        setattr(cls, UPGRADE_ATTRIBUTE, staticmethod(upgrade))
        return cls

    return decorate


def upgrade_of(cls: type) -> Upgrade | None:
    """The upgrade a class was decorated with, if any."""
    upgrade: Upgrade | None = getattr(cls, UPGRADE_ATTRIBUTE, None)
    return upgrade
