"""Settings from the outside world: command-line flags, a JSON config file, LINESIDE_* variables.

Every flag, config key and environment variable is made from the fields of
`runtime.settings`, so none is declared twice. Precedence, lowest first:
defaults, the `--config` file, the environment (`LINESIDE_THRESHOLD=0.7`), the
command line. A value of the wrong kind is refused in one line that names the
setting and where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .settings import SECTIONS, Settings, owner_of

log = logging.getLogger("lineside.settings")

ENV_PREFIX = "LINESIDE_"
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def add_arguments(parser: argparse.ArgumentParser, *sections: str) -> None:
    """A `--config` flag and one flag per field of each named section, grouped by section."""
    parser.add_argument("--config", type=Path, help="JSON file of any settings below (flat names)")
    for name in sections:
        cls = SECTIONS[name]
        group = parser.add_argument_group(f"{name} settings (also --config keys and {ENV_PREFIX}NAME variables)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            _add_flag(group, f, _base_type(hints[f.name]))


def _add_flag(group, f: dataclasses.Field, kind: type) -> None:
    flag, choices = "--" + f.name.replace("_", "-"), f.metadata.get("choices")
    text = f"{f.metadata.get('help', '')} (default: {f.default})"
    if kind is bool:
        group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif kind is tuple:  # repeatable, and each value may hold a comma list
        group.add_argument(flag, dest=f.name, action="append", default=None, help=text + "; repeatable")
    else:
        group.add_argument(flag, dest=f.name, default=None, help=text, choices=_as_text(choices))


def _as_text(choices) -> list[str] | None:
    return None if choices is None else [str(c) for c in choices]


def load(
    args: argparse.Namespace | None = None, config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults <- config file <- LINESIDE_* environment <- flags given on the command line."""
    config_file = config_file or (getattr(args, "config", None) if args is not None else None)
    values: dict[str, tuple[Any, str]] = {}
    if config_file:
        values |= {k: (v, f"config file {config_file}") for k, v in read_config(Path(config_file)).items()}
    values |= _from_environment(os.environ if environ is None else environ)
    if args is not None:
        values |= {k: (v, "the command line") for k, v in vars(args).items() if k in owner_of and v is not None}
    converted = {name: convert(name, value, where) for name, (value, where) in values.items()}
    return Settings.of(**converted)


def read_config(path: Path) -> dict[str, Any]:
    """A JSON object of flat setting names; unknown names are refused with the known ones listed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: must be one JSON object of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(owner_of))
    if unknown:
        raise ValueError(f"config file {path}: unknown settings {unknown}; known: {sorted(owner_of)}")
    return data


def _from_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    out = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in owner_of:
            out[name] = (value, f"environment variable {key}")
        else:
            log.warning("environment variable %s names no setting; ignored (see --help)", key)
    return out


def convert(name: str, value: Any, where: str = "settings") -> Any:
    """`value` (text from a flag or variable, or a JSON value) as the type the setting declares."""
    cls = SECTIONS[owner_of[name]]
    hint = typing.get_type_hints(cls)[name]
    kind = _base_type(hint)
    if value is None and type(None) not in typing.get_args(hint):  # JSON null for a setting that must have a value
        raise ValueError(f"setting {name}: null is not a valid {kind.__name__} (from {where}); leave it out instead")
    try:
        return _convert(kind, value)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"setting {name}: {value!r} is not a valid {kind.__name__} (from {where})") from e


def _convert(kind: type, value: Any) -> Any:
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE | FALSE:
            return value.lower() in TRUE
        raise ValueError(value)
    if kind is tuple:
        items = [value] if isinstance(value, str) else list(value)
        return tuple(v for item in items for v in (item.split(",") if isinstance(item, str) else [item]) if v != "")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if kind is float and isinstance(value, bool):
        raise ValueError(value)
    if kind in (str, Path) and not isinstance(value, (str, Path)):
        raise TypeError(value)
    return kind(value)


def _base_type(annotation) -> type:
    """Optional[X] / X | None -> X; tuple[X, ...] -> tuple."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple
    if args and origin is not None:
        return _base_type(args[0])
    return annotation
