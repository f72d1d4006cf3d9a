"""Recipes: the inspection configurations a PLC selects by index (docs/plc.md, `RecipeIndex`).

A line that runs several products tells the vision system which one comes next. A camera of the
cameras file may hold a numbered list of recipes, each a category, a folder of known-good references,
a threshold and the false-alarm mode:

    cameras:
      - id: top
        source: rtsp://...
        recipes:
          - {index: 1, category: metal_nut, references: refs/nut, threshold: 0.6, false_alarm_mode: expected}
          - {index: 2, category: screw, references: refs/screw, threshold: 0.45}

Index 0 is always the camera's own settings, the configuration serve starts with. Every recipe is read
and checked at start (a bad field refuses serve, naming the recipe and the field), and each one's
references are screened among themselves as taught frames are (detect/screening.py). A recipe whose
references do not all pass is kept, refused: the PLC that selects it is told why and the recipe in
force stays. The switch itself happens on the inspector's thread, between two frames, so a frame is
judged wholly by one recipe.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...detect.calibration import OperatingPoint, fixed
from ...detect.detector import Detector
from ...detect.frames import list_images, read_image
from ...detect.references import ReferenceMemory
from ...detect.screening import screen
from ...options import convert

log = logging.getLogger("lineside.serve")

FIELDS = ("category", "references", "threshold", "false_alarm_mode")  # each named as the setting it stands for
MAX_INDEX = 65535  # one Modbus register; 0 is the camera's own settings


@dataclass(frozen=True)
class RecipeSpec:
    """One recipe as the cameras file gives it, each field converted and checked as its setting is."""

    index: int
    category: str
    references: Path
    threshold: float
    false_alarm_mode: str


def read_recipes(entries, where: str, settings) -> tuple[RecipeSpec, ...]:
    """The `recipes:` list of one camera; ValueError naming `where`, the recipe and the field."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: recipes must be a list, each with an index, {', '.join(FIELDS)}")
    specs = [_recipe(entry, n, where, settings) for n, entry in enumerate(entries, 1)]
    indices = [s.index for s in specs]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        raise ValueError(f"{where}: recipe indices must differ; {', '.join(map(str, twice))} given twice")
    return tuple(specs)


def _recipe(entry, n: int, where: str, settings) -> RecipeSpec:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}, recipe {n}: must be a mapping (index, {', '.join(FIELDS)})")
    index = entry.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_INDEX:
        raise ValueError(f"{where}, recipe {n}: index must be a whole number 1..{MAX_INDEX} (0 is the camera's own)")
    here = f"{where}, recipe {index}"
    unknown = sorted(set(map(str, entry)) - {"index", *FIELDS})
    if unknown:
        raise ValueError(f"{here}: unknown fields {unknown}; a recipe has index, {', '.join(FIELDS)}")
    missing = [name for name in FIELDS[:3] if entry.get(name) is None]
    if missing:
        raise ValueError(f"{here}: no {missing[0]}; a recipe has index, {', '.join(FIELDS)}")
    given = {name: entry[name] for name in FIELDS if entry.get(name) is not None}
    try:
        own = {name: convert(name, value, here) for name, value in given.items()}
        checked = settings.replace(**own)  # each setting's own bounds and choices
    except ValueError as e:
        raise ValueError(f"{here}: {e}") from e
    folder = Path(own["references"])
    if not folder.is_dir():
        raise ValueError(f"{here}: references {folder} is not a folder of known-good images")
    return RecipeSpec(index, checked.job.category, folder, checked.detector.threshold, checked.job.false_alarm_mode)


@dataclass(frozen=True)
class Recipe:
    """A recipe made ready at start: the detector at its threshold, its references' memory, or why it is refused."""

    index: int
    category: str
    detector: Detector | None
    references: list | None  # RGB images (the explainer measures NG frames against them)
    memory: ReferenceMemory | None
    point: OperatingPoint | None
    refused: str  # "" when it can be put in force

    @property
    def name(self) -> str:
        """What the result line's audit block records (`audit.recipe`)."""
        return str(self.index)


def prepare(spec: RecipeSpec, detector: Detector, max_pixels: int) -> Recipe:
    """`spec` read, screened and remembered; a recipe whose references fail screening comes back refused."""
    paths = list_images([spec.references])
    if not paths:
        return _refused(spec, f"references {spec.references} holds no image")
    images = [read_image(p, max_pixels) for p in paths]
    encoded = np.stack([detector.encoder.encode(image)[0] for image in images])
    reasons = screen(images, encoded)
    bad = [(p.name, why) for p, why in zip(paths, reasons) if why]
    if bad:
        name, why = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return _refused(spec, f"references {spec.references} fail screening: {name} {why}{more}")
    mine = detector.with_settings(dataclasses.replace(detector.settings, threshold=spec.threshold))
    memory = mine.remember(images, colour="RGB")
    point = fixed(spec.threshold, f"recipe {spec.index} ({spec.false_alarm_mode})")
    return Recipe(spec.index, spec.category, mine, images, memory, point, "")


def _refused(spec: RecipeSpec, why: str) -> Recipe:
    log.warning("recipe %d refused: %s", spec.index, why)
    return Recipe(spec.index, spec.category, None, None, None, None, why)
