"""Run a detector over a category's test samples, frame by frame through detect(), and score the results."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from runtime.detect.detector import Detector
from runtime.detect.frames import read_image

from .datasets import Category, read_mask
from .metrics import binary_metrics, pixel_metrics


@dataclass
class Scored:
    """Scores of one method on one category, in test-sample order."""

    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def add(self, sample, score: float, amap: np.ndarray | None, mask: np.ndarray | None, ms: float) -> None:
        self.labels.append(sample.label)
        self.kinds.append(sample.kind)
        self.scores.append(score)
        self.ms.append(ms)
        if amap is not None and mask is not None:
            self.maps.append(amap)
            self.masks.append(mask)

    def metrics(self, exclude: tuple[str, ...] = ("uncertain",)) -> dict:
        keep = [i for i, k in enumerate(self.kinds) if k not in exclude]
        out = binary_metrics([self.labels[i] for i in keep], [self.scores[i] for i in keep])
        out = {f"image_{k}": v for k, v in out.items()}
        if self.maps:
            out |= pixel_metrics(self.masks, self.maps)
        out["n"] = len(keep)
        out["ms_p50"] = statistics.median(self.ms) if self.ms else float("nan")
        return out


def evaluate_category(detector: Detector, cat: Category, shots: int, limit: int | None) -> Scored:
    """Every test sample through `detector.detect` (the whole path, SAM included) against the first `shots`
    normal images: what parity compares between a torch graph and its ONNX export. Accuracy over reference
    draws is benchmarks/draws.py's."""
    refs = [read_image(p) for p in cat.normal_pool[:shots]] if shots else None
    if shots and len(refs) < shots:
        raise ValueError(f"{cat.name}: {shots} shots asked, only {len(refs)} normal images available")
    out = Scored()
    memory = detector.remember(refs, colour="RGB") if refs else None  # encoded once for every sample
    for sample in cat.test[:limit] if limit else cat.test:
        rgb = read_image(sample.path)
        mask = read_mask(sample.mask, rgb.shape[:2]) if cat.has_masks else None
        result = detector.detect(rgb, cat.name, memory, colour="RGB")
        out.add(sample, result.image_score, result.anomaly_map, mask, result.timings_ms.get("total", 0.0))
    return out
