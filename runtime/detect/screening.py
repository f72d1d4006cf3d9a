"""Known-good candidates checked among themselves before they become references.

    reasons = screen(images_rgb, globals_)     # per image None (kept) or why it is refused

Taught frames are meant to be good parts, but a camera can be covered, out of
focus, or see another part. Three checks, each cheap:

* empty: the frame is flat (grey-level standard deviation below EMPTY_STD)
  while the others are not (their median at least EMPTY_OTHERS times that);
* blurred: its sharpness (variance of the Laplacian at a common size) is below
  BLUR_RATIO of the median of the others' (needs 3 frames);
* outlier: its typical distance to the others (median of (1 - cos) / 2 between
  global embeddings) lies more than OUTLIER_MADS robust deviations above the
  frames' median typical distance (needs 3 frames). One odd frame cannot move
  the medians, so the others stay in.
"""

from __future__ import annotations

import cv2
import numpy as np

EMPTY_STD = 2.0  # grey levels
EMPTY_OTHERS = 4.0  # a flat frame is empty only beside frames this many times EMPTY_STD (flat parts exist)
BLUR_RATIO = 0.2
OUTLIER_MADS = 3.0
MIN_DEVIATION = 0.002  # distances closer than this are the same picture (identical frames)
RELATIVE_DEVIATION = 0.1  # the robust deviation is at least this fraction of the median typical distance
SCREEN_SIZE = 256  # long side at which sharpness is measured


def grey(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 grey at SCREEN_SIZE on the long side."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = SCREEN_SIZE / max(g.shape)
    return cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA).astype(np.float32)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey frame at SCREEN_SIZE: lower is blurrier."""
    return float(cv2.Laplacian(grey(rgb), cv2.CV_32F).var())


def typical_distances(globals_: np.ndarray) -> np.ndarray:
    """(R, D) unit rows -> (R,) each row's median distance (1 - cos) / 2 to the others."""
    d = (1.0 - globals_ @ globals_.T) / 2.0  # (R, R)
    np.fill_diagonal(d, np.nan)
    return np.nanmedian(d, axis=1)


def screen(images: list[np.ndarray], globals_: np.ndarray) -> list[str | None]:
    """HxWx3 uint8 RGB candidates and their (R, D) global embeddings -> per candidate None or why it is refused."""
    reasons: list[list[str]] = [[] for _ in images]
    spread = np.array([float(grey(image).std()) for image in images])
    for i in range(len(images) if len(images) >= 2 else 0):
        others = float(np.median(np.delete(spread, i)))
        if spread[i] < EMPTY_STD and others >= EMPTY_OTHERS * EMPTY_STD:
            reasons[i].append(f"empty (flat: grey-level deviation {spread[i]:.1f}, the others' median {others:.1f})")
    if len(images) >= 3:
        sharp = np.array([sharpness(image) for image in images])
        for i in range(len(images)):
            others = float(np.median(np.delete(sharp, i)))
            if not reasons[i] and sharp[i] < BLUR_RATIO * others:
                reasons[i].append(f"blurred (sharpness {sharp[i]:.1f}, the others' median {others:.1f})")
        typical = typical_distances(np.asarray(globals_, np.float32))
        middle = float(np.median(typical))
        deviation = max(1.4826 * float(np.median(np.abs(typical - middle))), RELATIVE_DEVIATION * middle, MIN_DEVIATION)
        limit = middle + OUTLIER_MADS * deviation
        for i, t in enumerate(typical):
            if t > limit:
                reasons[i].append(f"outlier (distance to the others {t:.3f}, typical {middle:.3f}, limit {limit:.3f})")
    return ["; ".join(r) if r else None for r in reasons]


def screen_joining(
    candidate: np.ndarray, candidate_global: np.ndarray, references: list, reference_globals
) -> str | None:
    """None when `candidate` (RGB, its global embedding beside it) may join `references`, else why not.

    A frame taught later (an operator's false alarm) is judged by the same checks
    as --teach's frames, among the references it would join: the references are
    the good parts already trusted, so a defect, another part or a covered lens
    shows as an outlier to them.
    """
    trusted = np.asarray(reference_globals, np.float32).reshape(len(references), -1)
    globals_ = np.vstack([trusted, np.asarray(candidate_global, np.float32).reshape(1, -1)])
    return screen([*references, candidate], globals_)[-1]
