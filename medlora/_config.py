"""Shared machinery for medlora's frozen attrs configs.

Configs are ``@attrs.frozen(kw_only=True)`` classes that inherit :class:`ConfigBase`: it gives
them ``from_dict``/``from_file`` (YAML or TOML, unknown keys rejected with a did-you-mean hint,
nested configs built recursively) and ``to_dict``. Validators here raise :class:`ConfigError`
that names the field and says how to fix the value.
"""

from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from medlora._deprecated import upgrade_of
from medlora._errors import ConfigError

T = TypeVar("T", bound="ConfigBase")


def _hint(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    if close:
        return f" Did you mean {close[0]!r}?"
    return f" Known keys: {', '.join(sorted(choices))}."


def _nested_config_type(tp: Any) -> type[ConfigBase] | None:
    """The ConfigBase subclass a field holds, also through ``X | None``."""
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and issubclass(arg, ConfigBase):
                return arg
    return None


class ConfigBase:
    """Mixin for frozen attrs configs: construction from mappings and files, and back."""

    @classmethod
    def from_dict(
        cls: type[T], data: Mapping[str, Any], *, path: Path | None = None, prefix: str = ""
    ) -> T:
        """Build the config from a mapping, rejecting unknown keys.

        Args:
            data: Keys are field names; nested configs are nested mappings.
            path: The file the mapping came from, named in errors.
            prefix: Dotted location of this mapping inside a larger config, for errors.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{prefix or cls.__name__}: expected a mapping of settings, got "
                f"{type(data).__name__}.",
                field=prefix or None,
                path=path,
            )
        upgrade = upgrade_of(cls)
        if upgrade is not None:  # old keys warn and are read under their new names
            data = upgrade(data, f"{path}: {prefix}" if path else prefix)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in attrs.fields(cls)}  # type: ignore[misc, arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if key not in fields:
                where = f" in {path}" if path else ""
                raise ConfigError(
                    f"Unknown setting {dotted!r}{where}.{_hint(key, list(fields))}",
                    field=dotted,
                    path=path,
                )
            nested = _nested_config_type(hints.get(key))
            if nested is not None and isinstance(value, Mapping):
                value = nested.from_dict(value, path=path, prefix=f"{dotted}.")
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            field = exc.field
            message = str(exc)
            if prefix and field and not field.startswith(prefix):
                message = message.replace(field, f"{prefix}{field}", 1)
                field = f"{prefix}{field}"
            if path is not None and not message.startswith(str(path)):
                message = f"{path}: {message}"
            raise ConfigError(message, field=field, path=path or exc.path) from None
        except TypeError as exc:  # a value of a type no converter could handle
            raise ConfigError(f"{prefix or cls.__name__}: {exc}", path=path) from exc

    @classmethod
    def from_file(cls: type[T], path: str | Path) -> T:
        """Read the config from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.", path=path)
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        try:
            if suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            elif suffix == ".toml":
                data = tomllib.loads(text)
            elif suffix == ".json":
                data = json.loads(text)
            else:
                raise ConfigError(
                    f"Config file {path} has suffix {suffix!r}; use .yaml, .toml or .json.",
                    path=path,
                )
        except ConfigError:
            raise
        except Exception as exc:  # the parsers' own error types differ
            raise ConfigError(f"Config file {path} cannot be parsed: {exc}", path=path) from exc
        return cls.from_dict(data, path=path)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that ``from_dict`` turns back into an equal config."""
        instance: Any = self
        return attrs.asdict(instance, value_serializer=_serialize)


def _serialize(_inst: Any, _field: Any, value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# --- validators ------------------------------------------------------------------------------


def _fail(attribute: attrs.Attribute[Any], value: Any, need: str) -> typing.NoReturn:
    raise ConfigError(f"{attribute.name} = {value!r} is invalid: {need}.", field=attribute.name)


def positive(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """The value must be a number greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        _fail(attribute, value, "set it to a number greater than 0")


def non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """The value must be a number of at least zero."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        _fail(attribute, value, "set it to a number of 0 or more")


def integer(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """The value must be an int (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(attribute, value, "set it to a whole number")


def in_range(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """The value must lie in ``[low, high]``."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(attribute, value, f"set it to a number between {low} and {high}")
        if not low <= value <= high:
            _fail(attribute, value, f"set it to a number between {low} and {high}")

    return check


def one_of(*choices: Any) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """The value must be one of ``choices``; the message suggests the closest."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
            _fail(attribute, value, f"choose one of {', '.join(map(repr, choices))}{hint}")

    return check
