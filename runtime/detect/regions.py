"""From an anomaly map to regions: candidates, masks (SAM or the candidates
themselves), pooling, explanation, and the regions in frame pixels.

    regions, refiner, work_map = find_regions(rgb, work_map, tokens, grid, text, sam, settings, times)

Everything works on the "work" map (the frame scaled so its longest side is at
most WORK_SIDE), so an 8000x6000 frame costs what a 512x384 one does; boxes and
masks are scaled to the frame only for the Result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..settings import DetectorSettings
from .result import Region
from .scoring import l2_normalize, softmax

if TYPE_CHECKING:  # sam.py imports Candidate from here
    from .prompt_text import CategoryText
    from .sam import SamRefiner

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
        found.append(
            Candidate(
                mask, (int(x), int(y), int(x + w), int(y + h)), (float(px), float(py)), float(work_map[mask].mean())
            )
        )
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


def find_regions(
    rgb: np.ndarray,
    work_map: np.ndarray,
    tokens: np.ndarray,
    grid: tuple[int, int],
    text: CategoryText | None,
    sam: SamRefiner | None,
    settings: DetectorSettings,
    times: dict[str, float],
) -> tuple[list[Region], str, np.ndarray]:
    """A suspicious frame's regions: candidates -> masks -> explained Regions in frame pixels.

    `rgb` HxWx3 uint8 (the frame), `work_map` (h, w) float32 0..1 at work size,
    `tokens` (N, D) the frame's unit patch tokens on `grid`. Returns the regions,
    the refiner used ("sam", "contours" or "none") and the work map refined
    inside the regions. Stage times (ms) are added to `times`.
    """
    s = settings
    t = time.perf_counter()
    found = candidates(work_map, s.region_threshold, s.min_region_frac, s.max_region_frac, s.max_regions)
    times["candidates"] = _ms(t)
    if not found:
        return [], "none", work_map
    if sam is not None and s.use_sam:
        masks, refiner = _sam_masks(rgb, work_map, found, sam, s, times), "sam"
    else:
        masks, refiner = [(c.mask, None) for c in found], "contours"
    t = time.perf_counter()
    regions, region_map = [], np.zeros_like(work_map)
    for mask, iou in masks:
        pooled = pool_tokens(tokens, mask, grid)
        if pooled is None:
            continue
        if text is not None:
            score, prompt, prob = explain(pooled, text.labels, list(text.texts), s.logit_scale)
        else:  # few-shot only: the region is as abnormal as the map says, with no words for it
            score, prompt, prob = float(work_map[mask].mean()), "", 0.0
        regions.append(
            to_frame(mask, rgb.shape[:2], score=score, prompt=prompt, probability=prob, refiner=refiner, sam_iou=iou)
        )
        region_map = np.maximum(region_map, mask * score)
    if regions:
        work_map = ((1 - s.refine_mix) * work_map + s.refine_mix * region_map).astype(np.float32)
    times["explain"] = _ms(t)
    return regions, refiner, work_map


def _sam_masks(
    rgb, work_map, found: list[Candidate], sam: SamRefiner, s: DetectorSettings, times: dict[str, float]
) -> list[tuple[np.ndarray, float]]:
    """SAM's mask for each candidate, those that pass `keep_sam_mask`, as (mask, SAM IoU)."""
    t = time.perf_counter()
    embeddings = sam.embed(rgb)
    times["sam_encoder"] = _ms(t)
    t = time.perf_counter()
    masks = [
        (m.mask, m.iou)
        for m in sam.masks(embeddings, work_map.shape, found)
        if keep_sam_mask(m.mask, m.iou, work_map, s)
    ]
    times["sam_decoder"] = _ms(t)
    return masks


def keep_sam_mask(mask: np.ndarray, iou: float, work_map: np.ndarray, s: DetectorSettings) -> bool:
    """A SAM mask is kept when SAM trusts it, its area is within the limits and the map agrees inside it."""
    area = mask.sum() / mask.size
    if iou < s.sam_min_iou or not s.min_region_frac <= area <= s.max_region_frac:
        return False
    return float(work_map[mask].mean()) >= s.sam_min_mass


def to_frame(mask: np.ndarray, frame_hw: tuple[int, int], **explained) -> Region:
    """A (h, w) bool work-map mask -> a Region in frame pixels (mask, box, polygon, area) with `explained`."""
    full = cv2.resize(mask.astype(np.uint8), (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST) > 0
    ys, xs = np.nonzero(full)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    scale = (frame_hw[1] / mask.shape[1], frame_hw[0] / mask.shape[0])
    return Region(mask=full, bbox=bbox, polygon=polygon(mask, scale), area=int(full.sum()), **explained)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
