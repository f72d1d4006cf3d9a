"""Run a detector (and simple baselines) over categories and score the results."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from runtime.detect.detector import Detector
from runtime.detect.frames import read_image
from runtime.detect.neighbours import NumpySearch, coreset_indices
from runtime.detect.scoring import as_distance

from .datasets import Category, read_mask
from .metrics import binary_metrics, pixel_metrics

log = logging.getLogger("lineside.bench")
RAW_SIDE = 64
PATCHCORE_CORESET = 0.1  # PatchCore's usual coreset share of the reference patches


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


def raw_pixel_baseline(refs: list[np.ndarray]):
    """Nearest normal reference in raw grey pixels: score = mean |diff|, map = per-pixel min |diff|."""
    bank = np.stack([_grey(r) for r in refs])  # (R, s, s)

    def score(rgb: np.ndarray) -> tuple[float, np.ndarray]:
        diff = np.abs(bank - _grey(rgb)[None])  # (R, s, s)
        nearest = diff.mean(axis=(1, 2)).argmin()
        pixel = cv2.GaussianBlur(diff.min(axis=0), (5, 5), 1.0)
        return float(diff[nearest].mean()), cv2.resize(pixel, (rgb.shape[1], rgb.shape[0]))

    return score


def _grey(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (RAW_SIDE, RAW_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def global_feature_baseline(detector: Detector, refs: list[np.ndarray]):
    """Nearest normal reference by the encoder's global embedding (no map)."""
    bank = np.stack([detector.encoder.encode(r)[0] for r in refs])

    def score(rgb: np.ndarray) -> tuple[float, None]:
        return float((1.0 - (bank @ detector.encoder.encode(rgb)[0]).max()) / 2.0), None

    return score


def patchcore_baseline(detector: Detector, refs: list[np.ndarray], ratio: float = PATCHCORE_CORESET):
    """The PatchCore recipe on the same encoder: every reference patch in one bank, a greedy k-center
    coreset of it, each frame patch's distance to its nearest bank patch anywhere, image score = the
    largest; no position, no top-k, no calibration. The peer that lineside's choices are measured against."""
    encoded = [detector.encoder.encode(r)[1] for r in refs]
    taps = len(encoded[0])
    banks = [np.concatenate([e[t] for e in encoded]) for t in range(taps)]  # (R * N, D) per tap
    keep = coreset_indices(np.concatenate(banks, axis=1), ratio, 0)
    searches = [NumpySearch(np.ascontiguousarray(b[keep])) for b in banks]
    rows, cols = detector.encoder.grid

    def score(rgb: np.ndarray) -> tuple[float, np.ndarray]:
        tokens = detector.encoder.encode(rgb)[1]
        dist = np.mean([as_distance(s.max_similarity(t)) for s, t in zip(searches, tokens)], axis=0)
        grid = dist.reshape(rows, cols).astype(np.float32)
        return float(grid.max()), cv2.resize(grid, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)

    return score


def evaluate_category(
    detector: Detector, cat: Category, shots: int, limit: int | None, baselines: bool
) -> dict[str, Scored]:
    """Every test sample through the detector (and baselines); Scored per method."""
    refs = [read_image(p) for p in cat.normal_pool[:shots]] if shots else None
    if shots and len(refs) < shots:
        raise ValueError(f"{cat.name}: {shots} shots asked, only {len(refs)} normal images available")
    methods = {"lineside": None}
    if baselines and refs:
        methods |= {
            "raw_pixels": raw_pixel_baseline(refs),
            "global_feature": global_feature_baseline(detector, refs),
            "patchcore_same_encoder": patchcore_baseline(detector, refs),
        }
    out = {name: Scored() for name in methods}
    memory = detector.remember(refs, colour="RGB") if refs else None  # encoded once for every sample
    samples = cat.test[:limit] if limit else cat.test
    for sample in samples:
        rgb = read_image(sample.path)
        mask = read_mask(sample.mask, rgb.shape[:2]) if cat.has_masks else None
        for name, method in methods.items():
            t = time.perf_counter()
            if method is None:
                result = detector.detect(rgb, cat.name, memory, colour="RGB")
                score, amap, ms = result.image_score, result.anomaly_map, result.timings_ms.get("total", 0.0)
            else:
                score, amap = method(rgb)
                ms = (time.perf_counter() - t) * 1e3
            out[name].add(sample, score, amap, mask, ms)
    return out
