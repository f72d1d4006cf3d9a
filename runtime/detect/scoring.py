"""The zero-shot and few-shot scoring maths, in plain numpy/OpenCV.

All token arrays are (N, D) float32 rows of L2-normalised patch tokens for one
image, N = grid * grid in row-major order; text class embeddings are (C, D).
Maps are float32 in 0..1.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .neighbours import NumpySearch

REFERENCE_SIZE = 518  # the input size at which smoothing_sigma is stated


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def class_embedding(prompt_embeddings: np.ndarray) -> np.ndarray:
    """(P, D) prompt embeddings of one class -> (D,) their normalised mean."""
    return l2_normalize(l2_normalize(prompt_embeddings).mean(axis=0))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def abnormal_probability(features: np.ndarray, classes: np.ndarray, scale: float) -> np.ndarray:
    """(..., D) features, (2, D) [normal, abnormal] -> (...) softmax probability of abnormal."""
    return softmax(scale * features @ classes.T)[..., 1].astype(np.float32)


def language_grid(taps: list[np.ndarray], classes: np.ndarray, scale: float, grid: tuple[int, int]) -> np.ndarray:
    """Per tap abnormal probability of every patch, averaged over taps -> (gh, gw)."""
    probs = [abnormal_probability(tokens, classes, scale) for tokens in taps]
    return np.mean(probs, axis=0).reshape(grid).astype(np.float32)


def reference_grid(taps: list[np.ndarray], searches, grid: tuple[int, int], spread: float) -> np.ndarray:
    """Few-shot score per patch: min over the normal memory of (1 - cos) / 2, averaged over
    taps, in units of the normal spread (`calibrated`). `searches`: per tap a search over its
    bank (neighbours.NumpySearch or FaissSearch)."""
    distance = np.mean([as_distance(search.max_similarity(tokens)) for tokens, search in zip(taps, searches)], axis=0)
    return calibrated(distance, spread).reshape(grid).astype(np.float32)


MIN_SCALE = 0.01  # never treat a cosine distance below this as the normal spread (noise)
SCALE_REFERENCES = 8  # references used to estimate the normal spread


def as_distance(similarity: np.ndarray) -> np.ndarray:
    """Cosine similarity -> (1 - cos) / 2 in 0..1."""
    return np.clip((1.0 - similarity) / 2.0, 0.0, 1.0)


def nearest_distance(tokens: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(N, D) vs (M, D) unit rows -> (N,) min over the bank of (1 - cos) / 2 (exact, blocked)."""
    return as_distance(NumpySearch(bank).max_similarity(tokens))


def normal_spread(per_ref: list[list[np.ndarray]]) -> float:
    """The 99th percentile of patch distances between known-good images (leave one out).

    Raw distances depend on the encoder, the part and the lighting; dividing by
    the spread among good references puts a reference map on a common scale
    (normal patches below 0.5, twice the normal spread at 0.75) so one set of
    thresholds works across lines. With one reference, each patch is compared
    with the other patches of the same image instead.
    """
    taps = len(per_ref[0])
    if len(per_ref) == 1:
        dists = []
        for tokens in per_ref[0]:
            sims = tokens @ tokens.T
            np.fill_diagonal(sims, -1.0)
            dists.append((1.0 - sims.max(axis=1)) / 2.0)
        return max(float(np.percentile(np.mean(dists, axis=0), 99)), MIN_SCALE)
    dists = []
    for r in range(min(len(per_ref), SCALE_REFERENCES)):
        others = [np.concatenate([per_ref[o][t] for o in range(len(per_ref)) if o != r]) for t in range(taps)]
        dists.append(np.mean([nearest_distance(per_ref[r][t], others[t]) for t in range(taps)], axis=0))
    return max(float(np.percentile(np.concatenate(dists), 99)), MIN_SCALE)


def calibrated(distance: np.ndarray | float, spread: float) -> np.ndarray | float:
    """Distance in units of the normal spread, mapped to 0..1 by 1 - 2^(-distance / spread): spread -> 0.5,
    twice the spread -> 0.75, and on towards 1 without reaching it, so that scores far beyond the normal spread
    keep their order (a clip at 1.0 made many of them equal, and no threshold could part them)."""
    return 1.0 - np.exp2(-np.maximum(np.asarray(distance, np.float64), 0.0) / spread)


def gaussian_kernel_size(sigma: float) -> int:
    return 2 * math.ceil(3 * sigma) + 1


def upsample_smooth(grid_map: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """(gh, gw) -> (H, W): bilinear (half-pixel centres), then Gaussian with reflected borders."""
    out = cv2.resize(grid_map, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        k = gaussian_kernel_size(sigma)
        out = cv2.GaussianBlur(out, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return out.astype(np.float32)


def sigma_at(size: int, sigma_at_518: float) -> float:
    """Smoothing is stated at 518 px; scale it to the model's input size."""
    return sigma_at_518 * size / REFERENCE_SIZE


def image_score(
    global_probability: float | None, anomaly_map: np.ndarray, map_weight: float, top: float = 0.0
) -> float:
    """Blend of the global-embedding probability and the map's peak: its maximum, or with `top` > 0 the mean
    of its highest `top` fraction of pixels (a defect covers some pixels; one hot pixel is noise). Without a
    global probability (None: no language branch) the peak alone."""
    if not anomaly_map.size:
        peak = 0.0
    elif top > 0.0:
        k = max(1, int(top * anomaly_map.size))
        peak = float(np.partition(anomaly_map.ravel(), anomaly_map.size - k)[-k:].mean())
    else:
        peak = float(anomaly_map.max())
    if global_probability is None:
        return peak
    return float((1.0 - map_weight) * global_probability + map_weight * peak)


def fuse(language: np.ndarray, reference: np.ndarray | None, reference_weight: float) -> np.ndarray:
    if reference is None:
        return language
    return ((1.0 - reference_weight) * language + reference_weight * reference).astype(np.float32)
