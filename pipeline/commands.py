"""CLI commands generated from config dataclasses: one option per field, so a new field is a new option.

What a field's `metadata` may say:
  help        the option's help text
  flag        its declaration when not `--field-name` ("--lambda", "--tiny/--full"); bools default to `--x/--no-x`
  choices     the names it takes: a registry (its keys) or a callable returning one; listed in the help, checked
              by the config's `validate` so the CLI and a TOML file give the same error
  repeatable  a tuple[str, ...] of KEY=VALUE given by repeating the option (`--set a=1 --set b=2`)
  words       words the option takes besides a comma-separated list ({"all": ()})
  argument    a positional argument instead of an option
  min, max    inclusive bounds of a number (of each item of a list); above: an exclusive lower bound
  plain_name  the value must be one folder name (no '/', not '..', not hidden)
Bounds are checked by `config.build`, so the CLI and a TOML file give the same error, naming the option.
Other tuples are comma-separated (`--lambdas 0,0.4`); every option left out keeps the TOML or default value.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from pipeline import config as config_io


@dataclass(frozen=True)
class Command:
    """A command: `module.config`'s fields are its options, `module.run(*extra, cfg)` does the work.

    Modules are named, not imported: building a command imports only its own module, so running
    `avl stage train-student` never loads the video side."""

    module: str
    config: str
    help: str
    run: str = "run"
    extra: tuple[tuple[str, Any, Any], ...] = ()  # (name, annotation, typer.Option) passed before the config
    done: str = ""  # printed with the run's result, e.g. "corpus written to {}"


class GeneratedGroup(TyperGroup):
    """A typer group whose `generated` commands are built on first use."""

    generated: dict[str, Command] = {}

    def list_commands(self, ctx) -> list[str]:
        return list(dict.fromkeys([*super().list_commands(ctx), *self.generated]))

    def get_command(self, ctx, name: str):
        if name in self.generated and name not in self.commands:
            self.commands[name] = build_command(name, self.generated[name])
        return super().get_command(ctx, name)


def group(commands: dict[str, Command]) -> type[GeneratedGroup]:
    """A group class (for `typer.Typer(cls=...)`) holding `commands`."""
    return type("GeneratedGroup", (GeneratedGroup,), {"generated": commands})


def build_command(name: str, command: Command):
    """The click command of `command`: its config's fields as options, `--config FILE`, then the run."""
    module = importlib.import_module(command.module)
    config_cls, run = getattr(module, command.config), getattr(module, command.run)
    hints = typing.get_type_hints(config_cls)
    parameters = [_parameter(field, hints[field.name]) for field in dataclasses.fields(config_cls)]
    parameters += [inspect.Parameter(extra, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)
                   for extra, annotation, info in command.extra]
    parameters.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                        default=typer.Option(None, "--config", help=(
                                            f"TOML file with these settings, flat or in a table named {name} "
                                            "(options given here win)."))))

    def callback(**values):
        toml = values.pop("config")
        extras = [values.pop(extra) for extra, _, _ in command.extra]
        overrides = {key: tuple(value) if isinstance(value, list) else value
                     for key, value in values.items() if value is not None and value != []}
        result = run(*extras, config_io.load(config_cls, toml, overrides, table=name))
        if command.done:
            typer.echo(command.done.format(result))

    callback.__signature__ = inspect.Signature(parameters)
    app = typer.Typer(add_completion=False)
    app.command(name, help=command.help)(callback)
    return typer.main.get_command(app)


def _parameter(field: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The typer parameter of one config field; None (not given) unless the field has no default."""
    meta, kind = field.metadata, _without_none(hint)
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = ... if required else None
    help_text = _help(field, kind)
    if typing.get_origin(kind) is tuple:
        (item,) = [arg for arg in typing.get_args(kind) if arg is not Ellipsis]
        if meta.get("argument"):
            annotation, info = list[item], typer.Argument(default, help=help_text, show_default=False)
        elif meta.get("repeatable"):
            annotation = Optional[list[str]]
            info = typer.Option(None, _flag(field, kind), help=help_text, metavar="KEY=VALUE", show_default=False)
        else:
            annotation = Optional[str]
            info = typer.Option(None, _flag(field, kind), help=help_text, show_default=False,
                                metavar=f"{item.__name__.upper()},...", parser=_list_parser(item, meta.get("words", {})))
    elif meta.get("argument"):
        annotation, info = kind, typer.Argument(default, help=help_text, show_default=False)
    else:
        annotation = kind if required else Optional[kind]
        info = typer.Option(default, _flag(field, kind), help=help_text, show_default=False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _without_none(hint: Any) -> Any:
    """`X | None` → X; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (kind,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return kind
    return hint


def _flag(field: dataclasses.Field, kind: Any) -> str:
    """`--field-name` (bools: `--field-name/--no-field-name`) unless the metadata names the flag."""
    name = "--" + field.name.replace("_", "-")
    return field.metadata.get("flag", f"{name}/--no-{name[2:]}" if kind is bool else name)


def _help(field: dataclasses.Field, kind: Any) -> str:
    """The field's help, its choices and its default."""
    parts = [field.metadata.get("help", "")]
    choices = field.metadata.get("choices")
    if choices is not None:
        parts.append("Choices: " + ", ".join(choices() if callable(choices) else choices) + ".")
    default = field.default
    if kind is bool and isinstance(default, bool):  # a flag left out is off unless said otherwise
        default = _flag(field, kind).partition("/")[0] if default else None
    elif isinstance(default, tuple):
        default = ",".join(map(str, default))
    if default not in (None, "", dataclasses.MISSING):
        parts.append(f"(default: {default})")
    return " ".join(part for part in parts if part)


def _list_parser(item: type, words: dict[str, Any]):
    """Comma-separated values of `item` (or one of `words`) → a tuple."""

    def parse(text: str) -> tuple:
        if text in words:
            return words[text]
        return tuple(item(value.strip()) for value in text.split(",") if value.strip())

    return parse
