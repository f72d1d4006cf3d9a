"""What a detection returns: the decision, its evidence, and how it was made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .explanation import geometric_explanation
from .frames import read_frame, write_image


def finite_or_none(value: float | None, digits: int = 6) -> float | None:
    """A number for strict JSON: rounded, or None when it is NaN or inf (never a bare NaN token)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def verdict(score: float, threshold: float) -> str:
    """NG at or above the threshold, OK below it, ERROR when the score is not a number."""
    if not math.isfinite(score):
        return "ERROR"
    return "NG" if score >= threshold else "OK"


@dataclass
class Region:
    """One defect region, in frame pixels, with the prompt that explains it."""

    mask: np.ndarray  # (H, W) bool
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1
    polygon: list[list[int]]
    area: int  # pixels
    score: float  # abnormality of the region's pooled tokens, 0..1
    prompt: str  # the abnormal prompt it matches best
    probability: float  # that prompt's share of the softmax
    refiner: str  # "sam" or "contours"
    sam_iou: float | None = None

    def summary(self) -> dict:
        return {
            "bbox": list(self.bbox),
            "polygon": self.polygon,
            "area": self.area,
            "score": finite_or_none(self.score, 4),
            "prompt": self.prompt,
            "probability": finite_or_none(self.probability, 4),
            "refiner": self.refiner,
            "sam_iou": finite_or_none(self.sam_iou, 4),
        }


@dataclass
class Result:
    """One frame's verdict. `label` is ERROR (never OK) when inference failed."""

    label: str
    image_score: float
    anomaly_map: np.ndarray | None  # (H, W) float32 0..1
    regions: list[Region] = field(default_factory=list)
    category: str = ""
    branches: tuple[str, ...] = ()  # "language", "reference"
    refiner: str = "none"  # "sam", "contours" or "none" (frame not suspicious)
    timings_ms: dict[str, float] = field(default_factory=dict)
    providers: tuple[str, ...] = ()  # of the image graph, as it ran
    precisions: dict[str, str] = field(default_factory=dict)  # graph -> the precision it ran at
    bundle_id: str = ""
    settings: dict = field(default_factory=dict)
    error: str | None = None
    explanation: dict | None = None  # NG: the rule explanation (explanation.py), measured with the verdict
    operating_point: dict | None = None  # how the threshold was set: mode, source, target (Detector.at); None: setting
    reference_set: dict | None = None  # the references scored against: images, content key, window (0: anywhere)

    def __post_init__(self):
        # The last line of defence: whoever built this Result, a score that is not a
        # number can never be a pass (or a fail); it is an ERROR that says so.
        if self.label in ("OK", "NG") and not math.isfinite(self.image_score):
            self.error = f"image score is {self.image_score}: not a number, the frame cannot be judged"
            self.label = "ERROR"

    @property
    def is_ng(self) -> bool:
        return self.label == "NG"

    def to_dict(self) -> dict:
        """JSON-ready summary (maps and masks left out; `save` writes them as PNG); an NG one explains itself."""
        data = {
            "label": self.label,
            "image_score": finite_or_none(self.image_score),
            "category": self.category,
            "branches": list(self.branches),
            "refiner": self.refiner,
            "regions": [r.summary() for r in self.regions],
            "timings_ms": {k: finite_or_none(v, 2) for k, v in self.timings_ms.items()},
            "providers": list(self.providers),
            "precisions": dict(self.precisions),
            "bundle_id": self.bundle_id,
            "settings": self.settings,
            "error": self.error,
        }
        if self.operating_point is not None:
            data["operating_point"] = dict(self.operating_point)
        if self.reference_set is not None:
            data["reference_set"] = dict(self.reference_set)
        if self.label == "NG":
            data["explanation"] = self.explanation or geometric_explanation(self)
        return data

    def save(self, folder: Path, stem: str) -> dict:
        """Write the map (16-bit PNG, value * 65535) and masks (8-bit PNG); return the dict with paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if self.anomaly_map is not None:
            path = folder / f"{stem}.map.png"
            write_image(path, (np.clip(self.anomaly_map, 0, 1) * 65535 + 0.5).astype(np.uint16))
            data["anomaly_map"] = path.name
        for i, (region, summary) in enumerate(zip(self.regions, data["regions"])):
            path = folder / f"{stem}.region{i}.png"
            write_image(path, region.mask.astype(np.uint8) * 255)
            summary["mask"] = path.name
        return data


def read_map(path: Path) -> np.ndarray:
    """Inverse of the map PNG written by `Result.save`."""
    data = read_frame(path)
    if data.dtype != np.uint16 or data.ndim != 2:
        raise ValueError(f"{path} is not a 16-bit anomaly map written by lineside")
    return data.astype(np.float32) / 65535.0
