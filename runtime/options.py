"""Settings dataclasses that also make CLI flags and read config files.

A field's default, type and `help` metadata are written once; `add_arguments`
turns them into argparse flags and `from_sources` merges a JSON config file and
the command line over the defaults, naming the field when a value is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with help text (and an optional `choices`)."""
    meta = {"help": help, **kwargs}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation) -> type:
    """Optional[X] / X | None -> X; tuple[X, ...] -> tuple."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple
    if args and origin is not None:
        return _base_type(args[0])
    return annotation


def _convert(name: str, kind: type, value: Any) -> Any:
    try:
        if value is None or isinstance(value, kind) and kind is not tuple:
            return value
        if kind is bool:
            if isinstance(value, str):
                return {"true": True, "false": False, "1": True, "0": False}[value.lower()]
            raise TypeError
        if kind is tuple:
            items = [value] if isinstance(value, str) else list(value)
            return tuple(v for item in items for v in (item.split(",") if isinstance(item, str) else [item]) if v != "")
        return kind(value)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"setting {name}: {value!r} is not a valid {kind.__name__}") from e


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, flag = _base_type(hints[f.name]), "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata.get('help', '')} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is tuple:  # repeatable, and each value may hold a comma list
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=text + "; repeatable")
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text, choices=f.metadata.get("choices"))


def from_sources(cls: type[T], config_file: Path | None = None, args: argparse.Namespace | None = None) -> T:
    """Defaults <- JSON config file <- command-line flags that were given."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        try:
            data = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"config file {config_file}: {e}") from e
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config file {config_file}: unknown settings {unknown}; known: {sorted(names)}")
        values |= data
    if args is not None:
        values |= {k: v for k, v in vars(args).items() if k in names and v is not None}
    converted = {k: _convert(k, _base_type(hints[k]), v) for k, v in values.items()}
    return cls(**converted)
