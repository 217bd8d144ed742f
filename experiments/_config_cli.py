"""A command line generated from a frozen config dataclass: one `--flag` per field.

Every experiment describes its settings once, as a frozen dataclass, and gets its CLI from it:

    @dataclasses.dataclass(frozen=True)
    class Config:
        '''What the experiment does.

        Attributes:
            epochs: passes over the training data.
            progress: show a progress bar.
        '''
        epochs: int = 100
        progress: bool = True

    config = parse_config(Config, argv)      # `--epochs 5 --no-progress` -> Config(5, False)

Field `foo_bar` becomes `--foo-bar`. Its help is `field(metadata={"help": ...})` if given,
else the field's entry in the class docstring's Google-style `Attributes:` section. Supported
field types: `int`, `float`, `str`, `pathlib.Path`, `bool` (as `--flag/--no-flag`),
`typing.Literal[...]` (as choices), `tuple[T, ...]` of those scalars (as `nargs='+'`), and
`T | None` (the flag takes a `T`; `None` can only be the default). Flags must be spelled in
full (no abbreviations). Values the dataclass
itself rejects (its `__post_init__` raising `ValueError` or `TypeError`) are reported as
ordinary command-line errors: usage, the message, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import pathlib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

Config = TypeVar("Config")

_SCALARS = (int, float, str, pathlib.Path)


def parse_config(
    config_cls: type[Config], argv: Sequence[str] | None = None, prog: str | None = None
) -> Config:
    """Parses `argv` (default `sys.argv[1:]`) into an instance of `config_cls`.

    Args:
        config_cls: a dataclass type; every field becomes a flag.
        argv: command-line arguments, without the program name; `os.PathLike` items are
            taken as their paths.
        prog: program name shown in usage and errors.

    Returns:
        `config_cls(**values)`; fields whose flag was not given keep their defaults.

    Raises:
        SystemExit: on `--help` (status 0) or on a bad value (status 2, with the reason).
    """
    parser = build_parser(config_cls, prog=prog)
    if argv is not None:
        argv = [os.fspath(arg) if isinstance(arg, os.PathLike) else arg for arg in argv]
    namespace = parser.parse_args(argv)
    values = {}
    for field in dataclasses.fields(config_cls):
        value = getattr(namespace, field.name)
        if isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    try:
        return config_cls(**values)
    except (ValueError, TypeError) as error:
        parser.error(f"invalid configuration: {error}")
        raise  # unreachable: parser.error exits


def build_parser(config_cls: type, prog: str | None = None) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` with one flag per field of the dataclass `config_cls`.

    Raises:
        TypeError: if `config_cls` is not a dataclass or a field has an unsupported type.
    """
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"config_cls must be a dataclass type, got {config_cls!r}")
    summary, field_docs = _docstring_parts(config_cls)
    parser = argparse.ArgumentParser(
        prog=prog, description=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)  # a typo such as --epoch must not silently set --epochs
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        help_text = field.metadata.get("help", field_docs.get(field.name, ""))
        _add_field(parser, field, hints[field.name], help_text)
    return parser


def _add_field(parser: argparse.ArgumentParser, field: dataclasses.Field, hint: Any, help_text: str) -> None:
    flag = "--" + field.name.replace("_", "-")
    help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
    kwargs: dict[str, Any] = {"dest": field.name, "help": help_text or " "}
    default = _default(field)
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    hint = _strip_optional(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is tuple:
        element = _tuple_element(field.name, hint)
        kwargs.update(_scalar_kwargs(field.name, element), nargs="+")
    else:
        kwargs.update(_scalar_kwargs(field.name, hint))
    parser.add_argument(flag, **kwargs)


def _scalar_kwargs(name: str, hint: Any) -> dict[str, Any]:
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return {"type": type(choices[0]), "choices": choices}
    if hint in _SCALARS:
        return {"type": hint, "metavar": hint.__name__.upper()}
    raise TypeError(f"config field {name!r} has type {hint!r}; supported: int, float, str, Path, "
                    "bool, Literal[...], tuple[T, ...] and T | None of those")


def _tuple_element(name: str, hint: Any) -> type:
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
        return args[0]
    raise TypeError(f"config field {name!r} has type {hint!r}; tuples must be tuple[T, ...] "
                    "with T one of int, float, str, Path")


def _strip_optional(hint: Any) -> Any:
    """`T | None` (or `Optional[T]`) -> `T`; any other hint unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _docstring_parts(config_cls: type) -> tuple[str, dict[str, str]]:
    """The docstring's text before `Attributes:`, and its `name: description` entries."""
    doc = inspect.cleandoc(config_cls.__doc__ or "")
    if doc.startswith(f"{config_cls.__name__}("):  # the signature dataclasses writes when undocumented
        return "", {}
    summary, _, rest = doc.partition("\nAttributes:\n")
    entries: dict[str, str] = {}
    entry_indent = None
    current = None
    for line in rest.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # the next section starts
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = re.match(r"^(\w+)(?: \([^)]*\))?:(.*)$", line.strip())
        if indent == entry_indent and match:
            current = match.group(1)
            entries[current] = match.group(2).strip()
        elif current is not None:
            entries[current] = f"{entries[current]} {line.strip()}".strip()
    return summary.strip(), entries
