"""Draw a Result over its frame: heatmap, region contours, verdict and explanations."""

from __future__ import annotations

import cv2
import numpy as np

from .result import Result

COLOURS = {"OK": (60, 180, 60), "NG": (40, 40, 230), "ERROR": (0, 165, 255)}  # BGR


def render(frame_rgb: np.ndarray, result: Result, alpha: float = 0.45) -> np.ndarray:
    """HxWx3 uint8 RGB + Result -> HxWx3 uint8 BGR overlay, ready for cv2.imwrite or MJPEG."""
    canvas = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    if result.anomaly_map is not None:
        heat = cv2.applyColorMap((np.clip(result.anomaly_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        canvas = cv2.addWeighted(canvas, 1 - alpha, heat, alpha, 0)
    scale = max(0.4, min(canvas.shape[:2]) / 600)
    thick = max(1, round(2 * scale))
    for region in result.regions:
        if region.polygon:
            cv2.polylines(canvas, [np.array(region.polygon, np.int32)], True, (255, 255, 255), thick)
        x0, y0 = region.bbox[:2]
        caption = f"{region.prompt} ({region.probability:.2f})" if region.prompt else f"{region.score:.2f}"
        _text(canvas, caption, (x0, max(12, y0 - 4)), 0.45 * scale)
    _text(canvas, f"{result.label} {result.image_score:.3f}", (8, int(28 * scale)), scale,
          COLOURS.get(result.label, (255, 255, 255)))  # fmt: skip
    return canvas


def _text(canvas, text, origin, scale, colour=(255, 255, 255)) -> None:
    thick = max(1, round(2 * scale))
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
