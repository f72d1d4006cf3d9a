"""How a setting is declared and checked: the field helpers and the `Section` base of runtime/settings.py.

A field carries its help text and bounds in its metadata; a section checks
every field against them when it is built (NaN and inf refused first, since
they compare false with every bound), then its own rules between fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def setting(default: Any, help: str, *, low=None, high=None, above=None, choices=None) -> Any:
    """A field with its help text and bounds: `low <= value <= high`, `value > above`, `value in choices`."""
    meta = {"help": help, "low": low, "high": high, "above": above, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


def unit(default: float, help: str) -> Any:
    """A setting in 0..1: a threshold, weight or fraction."""
    return setting(default, help, low=0.0, high=1.0)


@dataclass(frozen=True)
class Section:
    """Checks every field against its declared bounds, then the section's own rules (`check`)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Rules between fields; a section overrides it when it has any."""

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}


def _check_field(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"setting {f.name}: {value} is not a finite number")
    if meta.get("choices") is not None:
        bad = [v for v in (value if isinstance(value, tuple) else (value,)) if v not in meta["choices"]]
        if bad:
            raise ValueError(f"setting {f.name}: {bad[0]!r} is not one of {', '.join(map(str, meta['choices']))}")
    if meta.get("low") is not None and value < meta["low"]:
        raise ValueError(f"setting {f.name}: {value} must be >= {meta['low']}")
    if meta.get("high") is not None and value > meta["high"]:
        raise ValueError(f"setting {f.name}: {value} must be <= {meta['high']}")
    if meta.get("above") is not None and not value > meta["above"]:
        raise ValueError(f"setting {f.name}: {value} must be > {meta['above']}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
