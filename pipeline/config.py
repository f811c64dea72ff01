"""Frozen per-stage configs: defaults < TOML file < CLI overrides, strictly typed, saved beside outputs."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
import tomllib

from pipeline.errors import MissingInputError, UserError

C = TypeVar("C")


class ConfigError(UserError, ValueError):
    """A config key is unknown or has the wrong type; the message names the key."""


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Check `value` against a field annotation, converting only what is lossless (int→float, str→Path)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, option, value)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"config key {name!r}: {value!r} matches none of {annotation}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, *_) = typing.get_args(annotation)
        return tuple(_coerce(name, item_type, item) for item in value)
    if annotation is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool or annotation is str:
        if isinstance(value, annotation):
            return value
    else:
        raise ConfigError(f"config key {name!r}: unsupported annotation {annotation}")
    raise ConfigError(
        f"config key {name!r}: expected {getattr(annotation, '__name__', annotation)}, "
        f"got {type(value).__name__} {value!r}"
    )


def build(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Make a `cls` from a dict, failing on unknown keys and wrong types (naming key and source)."""
    hints = typing.get_type_hints(cls)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}")
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = _coerce(name, hints[name], value)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    instance = cls(**checked)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate()
    return instance


def load(cls: type[C], toml_path: Path | None = None, overrides: dict[str, Any] | None = None,
         table: str | None = None) -> C:
    """Defaults, then a TOML file, then CLI overrides (None: not given).

    The file holds the settings flat, or in a table named `table`: the command as typed after `avl` or
    `avl stage` (`[train-student]`, `[sweep]`), so one file can be read by the command it names. Keys may
    be split between the two; any other table, or a key given both flat and in the table, is an error."""
    values: dict[str, Any] = {}
    if toml_path is not None:
        values = _file_values(Path(toml_path), table)
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return build(cls, values, source=str(toml_path) if toml_path else "config")


def _file_values(path: Path, table: str | None) -> dict[str, Any]:
    """A TOML file's settings for the command `table`: its flat keys merged with its `[table]`."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    section = document.pop(table, {}) if table is not None else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {table!r} must be a [{table}] table, got {type(section).__name__} {section!r}")
    others = sorted(key for key, value in document.items() if isinstance(value, dict))
    if others:
        expected = f"only a [{table}] table" if table else "no tables"
        raise ConfigError(f"{path}: table(s) {others} in a config for {table or 'this command'}; expected {expected} "
                          "and flat keys")
    both = sorted(set(section) & set(document))
    if both:
        raise ConfigError(f"{path}: key(s) {both} given both flat and in the [{table}] table")
    return {**document, **section}


def parse_options(options: tuple[str, ...], what: str = "option") -> dict[str, Any]:
    """'key=value' strings → {key: value}; a value is read as TOML (2e-3, true, 'text'), else as plain text.
    `what` names the options in errors."""
    parsed = {}
    for option in options:
        key, equals, raw = option.partition("=")
        key, raw = key.strip(), raw.strip()
        if not equals or not key:
            raise ConfigError(f"{what} {option!r} is not key=value")
        try:
            parsed[key] = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            parsed[key] = raw
    return parsed


def to_dict(config: Any) -> dict[str, Any]:
    """Plain TOML-able dict of a config (Paths as strings, Nones dropped)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(item) if isinstance(item, Path) else item for item in value]
        out[field.name] = value
    return out


def save(config: Any, path: Path) -> Path:
    """Write the resolved config as TOML beside a stage's outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(to_dict(config)))
    return path
