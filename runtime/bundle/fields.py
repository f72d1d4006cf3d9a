"""Checks of one manifest field each: presence, type and paths, refused in one line naming the field.

A manifest is a file anyone can edit, so every value read from it goes through
these before use, and a bad one is refused with its dotted name
("components.clip_image.files.fp32.sha256 is missing") instead of surfacing
later as a KeyError deep in the detector.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

_PLAIN_KEY = re.compile(r"[\w+-]+")


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message says how to rebuild it."""


def describe(value: Any) -> str:
    """A short one-line description of a JSON value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def dotted(at: str, key: Any) -> str:
    """The dotted name of `key` under `at`; odd keys are quoted so the message stays one line."""
    key = str(key)
    if not _PLAIN_KEY.fullmatch(key):
        return f"{at}[{key!r}]"
    return f"{at}.{key}" if at else key


def typed(value: Any, at: str, kinds: tuple[type, ...], what: str) -> Any:
    """`value` if it is one of `kinds` (a bool is never an int here), else BundleError."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise BundleError(f"{at} must be {what}, not {describe(value)}")
    return value


def need(d: dict, key: str, at: str, kinds: tuple[type, ...], what: str) -> Any:
    """`d[key]`, which must be present and of `kinds`."""
    if key not in d:
        raise BundleError(f"{dotted(at, key)} is missing")
    return typed(d[key], dotted(at, key), kinds, what)


def optional(d: dict, key: str, at: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
    """`d[key]` if present (then of `kinds`), else `default`."""
    return typed(d[key], dotted(at, key), kinds, what) if key in d else default


def an_object(value: Any, at: str) -> dict:
    return typed(value, at, (dict,), "an object")


def one_of(value: str, at: str, allowed) -> str:
    """`value` if it is among `allowed`, else BundleError listing them."""
    if value not in allowed:
        raise BundleError(f"{at} {value!r} is unknown; one of {', '.join(allowed)}")
    return value


def relative_path(path: str, at: str) -> str:
    """Refuse paths that could name a file outside the bundle folder, whatever the OS."""
    if not path or "\x00" in path:
        raise BundleError(f"{at} must be a non-empty relative path, not {path!r}")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
        raise BundleError(f"{at} {path!r} is absolute; bundle files must lie inside the bundle folder")
    if ".." in PurePosixPath(path).parts or ".." in PureWindowsPath(path).parts:
        raise BundleError(f"{at} {path!r} climbs out with '..'; bundle files must lie inside the bundle folder")
    return path
