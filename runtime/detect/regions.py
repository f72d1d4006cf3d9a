"""From an anomaly map to regions: candidates, SAM-free masks, pooling, explanation.

Everything works on the "work" map (the frame scaled so its longest side is at
most WORK_SIDE), so an 8000x6000 frame costs what a 512x384 one does; boxes and
masks are scaled to the frame only for the Result.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .scoring import l2_normalize, softmax

WORK_SIDE = 512


def work_size(height: int, width: int) -> tuple[int, int]:
    """The frame's size scaled down (never up) so the longest side is <= WORK_SIDE."""
    scale = min(1.0, WORK_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class Candidate:
    """A connected component of the thresholded map, in work-map pixels."""

    mask: np.ndarray  # (h, w) bool
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive-exclusive)
    peak: tuple[float, float]  # x, y of the map maximum inside
    mass: float  # mean map value inside


def candidates(work_map: np.ndarray, threshold: float, min_frac: float, max_frac: float, limit: int) -> list[Candidate]:
    """8-connected components above `threshold` within the area limits, strongest first."""
    binary = (work_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    total = work_map.size
    found = []
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        if not min_frac * total <= area <= max_frac * total:
            continue
        mask = labels == label
        masked = np.where(mask, work_map, -1.0)
        py, px = np.unravel_index(int(masked.argmax()), masked.shape)
        found.append(Candidate(mask, (int(x), int(y), int(x + w), int(y + h)), (float(px), float(py)),
                               float(work_map[mask].mean())))  # fmt: skip
    found.sort(key=lambda c: c.mass * c.mask.sum(), reverse=True)
    return found[:limit]


def pool_tokens(tokens: np.ndarray, mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray | None:
    """Mean of the patch tokens (N, D) weighted by how much of each patch the mask covers."""
    weights = cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA).reshape(-1)
    if weights.sum() <= 0:
        return None
    return l2_normalize((weights[:, None] * tokens).sum(axis=0))


def explain(region: np.ndarray, labels: np.ndarray, texts: list[str], scale: float) -> tuple[float, str, float]:
    """Region embedding vs [normal, abnormal prompts...] -> (abnormality, best prompt, its probability).

    `labels` (1 + K, D): row 0 the normal class, rows 1.. the abnormal prompts
    whose texts are `texts`.
    """
    probs = softmax(scale * (labels @ region))
    best = 1 + int(probs[1:].argmax())
    return float(1.0 - probs[0]), texts[best - 1], float(probs[best])


def polygon(mask: np.ndarray, scale_xy: tuple[float, float], max_points: int = 64) -> list[list[int]]:
    """The largest outer contour of a mask, simplified, in frame pixels."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    contour = max(contours, key=cv2.contourArea)
    epsilon = 0.5
    while len(contour) > max_points:
        contour = cv2.approxPolyDP(contour, epsilon, True)
        epsilon *= 2
    return [[round(x * scale_xy[0]), round(y * scale_xy[1])] for x, y in contour.reshape(-1, 2)]
