"""Frozen per-stage configs: defaults < TOML file < CLI overrides, strictly typed, saved beside outputs.

A setting's TOML key is its option's name (`--lambda` → `lambda`); a field's metadata may declare bounds
(`min`, `max`, `above`) and `plain_name` (one folder name), checked by `build` with the option named.
"""

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


def toml_name(field: dataclasses.Field) -> str:
    """A setting's key in a TOML file: its CLI option's name (`--lambda` → lambda, `--batch-size` → batch_size)."""
    flag = field.metadata.get("flag")
    if not flag or field.metadata.get("argument"):
        return field.name
    return flag.partition("/")[0].removeprefix("--").replace("-", "_")


def option_name(field: dataclasses.Field) -> str:
    """The option as the user types it: `--lambda`, `--batch-size` (a positional argument: its name in capitals)."""
    if field.metadata.get("argument"):
        return field.name.upper()
    return "--" + toml_name(field).replace("_", "-")


def _spellings(cls: type) -> dict[str, dataclasses.Field]:
    """Every key that names a field of `cls`: its TOML name and, so older files still load, its field name."""
    names = {}
    for field in dataclasses.fields(cls):
        names[field.name] = names[toml_name(field)] = field
    return names


def field_name(cls: type, key: str) -> str:
    """The field a key names (`lambda`, `lam` and `batch-size` name fields lam and batch_size), or the key."""
    field = _spellings(cls).get(key.replace("-", "_"))
    return field.name if field is not None else key


def by_field(cls: type, values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """`values` keyed by field name: a TOML name, a field name or either with dashes ("batch-size") names a field;
    unknown keys are kept as given (`build` refuses them) and two keys naming one setting are an error."""
    spellings = _spellings(cls)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in values.items():
        field = spellings.get(key.replace("-", "_"))
        name = field.name if field is not None else key
        if name in out:
            what = option_name(field) if field is not None else repr(name)
            raise ConfigError(f"{source}: keys {given[name]!r} and {key!r} both set {what}; keep one")
        out[name], given[name] = value, key
    return out


def _bound_problem(field: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` (each item of a tuple) against the field's declared `min`, `max`, `above` and
    `plain_name`, or None."""
    meta = field.metadata
    for item in value if isinstance(value, tuple) else (value,):
        if item is None:
            continue
        if "above" in meta and not item > meta["above"]:
            return f"must be above {meta['above']}, got {item!r}"
        if "min" in meta and not item >= meta["min"]:
            return f"must be at least {meta['min']}, got {item!r}"
        if "max" in meta and not item <= meta["max"]:
            return f"must be at most {meta['max']}, got {item!r}"
        if meta.get("plain_name") and (problem := plain_name_problem(item)):
            return problem
    return None


def plain_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder name inside a run directory (a path, '..', hidden or empty), or None."""
    if not name or name != name.strip():
        return f"must be a folder name, got {name!r}"
    if "/" in name or "\\" in name or "\0" in name:
        return f"must be a single folder name without '/', got {name!r}"
    if name.startswith("."):
        return f"must be a plain folder name (not '.', '..' or hidden), got {name!r}"
    return None


def build(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Make a `cls` from a dict, failing on unknown keys, wrong types and values outside the declared bounds
    (naming the key or option and the source)."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    values = by_field(cls, values, source)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = sorted(toml_name(field) for field in fields.values())
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys: {known}")
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = _coerce(toml_name(fields[name]), hints[name], value)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        if problem := _bound_problem(fields[name], checked[name]):
            where = "" if source == "config" else f" (in {source})"
            raise ConfigError(f"{option_name(fields[name])} {problem}{where}")
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
    source = str(toml_path) if toml_path else "config"
    values: dict[str, Any] = {}
    if toml_path is not None:
        values = by_field(cls, _file_values(Path(toml_path), table), source)
    values.update(by_field(cls, {key: value for key, value in (overrides or {}).items() if value is not None}))
    return build(cls, values, source=source)


def _saved_values(cls: type, path: Path) -> dict[str, Any]:
    """A config.toml that `save` wrote, maybe by an older version, keyed by field: keys renamed since are read by
    their old names, and values an older version wrote otherwise are upgraded (the class's `upgrade_saved`)."""
    try:
        values = by_field(cls, tomllib.loads(Path(path).read_text()), str(path))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    upgrade = getattr(cls, "upgrade_saved", None)
    return upgrade(values) if upgrade is not None else values


def saved_settings(cls: type, path: Path) -> dict[str, Any]:
    """A saved config.toml as `to_dict` writes it now, settings added since at their defaults; not validated, so a
    run can be compared with the settings it was made with."""
    names = {field.name: toml_name(field) for field in dataclasses.fields(cls)}
    values = _saved_values(cls, path)
    return {**to_dict(cls()), **{names.get(key, key): _plain(value) for key, value in values.items()}}


def load_saved(cls: type[C], path: Path) -> C:
    """The config a run saved, read as `saved_settings` reads it and checked as `build` checks any."""
    return build(cls, _saved_values(cls, path), source=str(path))


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


def _plain(value: Any) -> Any:
    """A value as TOML holds it: Paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [str(item) if isinstance(item, Path) else item for item in value]
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Plain TOML-able dict of a config keyed by TOML names (each option's name: `lambda`, `batch_size`), Paths as
    strings, Nones dropped."""
    return {toml_name(field): _plain(getattr(config, field.name)) for field in dataclasses.fields(config)
            if getattr(config, field.name) is not None}


def save(config: Any, path: Path) -> Path:
    """Write the resolved config as TOML beside a stage's outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(to_dict(config)))
    return path
