"""Draw a Result over its frame: heatmap, the verdict large, and region contours for NG frames only.

A picture must never contradict its verdict: contours and their captions are
drawn only on NG frames (an OK frame shows its heatmap, nothing outlined), and
the verdict is a banner across the top in the verdict's colour, with the score
and the threshold that decided it. Where the true label is known (the demo,
benchmarks), it stands beside the verdict, with MISSED or FALSE ALARM when they
disagree.
"""

from __future__ import annotations

import cv2
import numpy as np

from .result import Result

COLOURS = {"OK": (60, 160, 60), "NG": (40, 40, 220), "ERROR": (0, 140, 255)}  # BGR
FONT = cv2.FONT_HERSHEY_SIMPLEX


def render(
    frame_rgb: np.ndarray,
    result: Result,
    alpha: float = 0.45,
    truth: str | None = None,
    heatmap: bool = True,
    outlines: bool = True,
    banner: bool = True,
) -> np.ndarray:
    """HxWx3 uint8 RGB + Result -> HxWx3 uint8 BGR overlay, ready for cv2.imwrite or MJPEG.

    `truth`: "good" or "defective" when known, shown beside the verdict. `heatmap`, `outlines` and
    `banner` switch those layers (the operator's page draws its own verdict, and may want the part
    unpainted). A map smaller than the frame (kept small in memory) is stretched to it.
    """
    canvas = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    if heatmap and result.anomaly_map is not None:
        values = np.clip(result.anomaly_map, 0, 1)
        if values.shape[:2] != canvas.shape[:2]:
            values = cv2.resize(values.astype(np.float32), canvas.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_JET)
        canvas = cv2.addWeighted(canvas, 1 - alpha, heat, alpha, 0)
    scale = max(0.4, min(canvas.shape[:2]) / 600)
    if outlines and result.label == "NG":
        _regions(canvas, result, scale)
    if banner:
        _banner(canvas, result, truth)
    return canvas


def _regions(canvas: np.ndarray, result: Result, scale: float) -> None:
    thick = max(1, round(2 * scale))
    for region in result.regions:
        if region.polygon:
            cv2.polylines(canvas, [np.array(region.polygon, np.int32)], True, (255, 255, 255), thick)
        x0, y0 = region.bbox[:2]
        caption = f"{region.prompt} ({region.probability:.2f})" if region.prompt else f"{region.score:.2f}"
        size = max(0.45, 0.45 * scale)  # never below about 10 px tall: a caption must be read on a small frame
        _text(canvas, caption, (x0, max(round(24 * size), y0 - 4)), size)


def _banner(canvas: np.ndarray, result: Result, truth: str | None) -> None:
    """A bar across the top: the verdict large in its colour, then score, threshold and the known label."""
    h, w = canvas.shape[:2]
    bar = max(24, round(0.12 * min(h, w)))
    big = _fit(result.label, bar * 0.7, w * 0.35)
    colour = COLOURS.get(result.label, (255, 255, 255))
    canvas[:bar] = (0.35 * canvas[:bar]).astype(np.uint8)  # darkened, so the text reads on any frame
    (tw, th), _ = cv2.getTextSize(result.label, FONT, big, _thick(big))
    x, y = max(4, bar // 6), (bar + th) // 2
    _text(canvas, result.label, (x, y), big, colour)
    threshold = result.settings.get("threshold") if isinstance(result.settings, dict) else None
    details = f"score {result.image_score:.3f}"
    if isinstance(threshold, (int, float)) and result.label in ("OK", "NG"):
        details += f" {'>=' if result.label == 'NG' else '<'} {threshold:.3f}"
    if truth:
        details += f"  known: {truth}" + _disagreement(result.label, truth)
    x += tw + max(6, bar // 4)
    _text(canvas, details, (x, y), _fit(details, bar * 0.4, 0.92 * max(1, w - x - 4)))


def _disagreement(label: str, truth: str) -> str:
    if label == "OK" and truth == "defective":
        return " - MISSED"
    if label == "NG" and truth == "good":
        return " - FALSE ALARM"
    return ""


def _fit(text: str, height: float, width: float) -> float:
    """The font scale at which `text` is `height` pixels tall, shrunk to fit `width`."""
    (tw, th), _ = cv2.getTextSize(text, FONT, 1.0, 2)
    return max(0.3, min(height / max(th, 1), width / max(tw, 1)))


def _thick(scale: float) -> int:
    return max(1, round(2 * scale))


def _text(canvas, text, origin, scale, colour=(255, 255, 255)) -> None:
    """`text` in `colour` with a black rim, so that it reads on any frame. The rim is the same text shifted one
    pixel each way, not a thicker stroke: OpenCV 5 spaces glyphs by stroke weight, so a thicker copy runs longer."""
    thick, (x, y) = _thick(scale), origin
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        cv2.putText(canvas, text, (x + dx, y + dy), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, FONT, scale, colour, thick, cv2.LINE_AA)
