"""What the detector saw, in words a text-only language model (or a person) can use.

For every region: where it is, how big, what shape, and how it differs from the
same place on a known-good part (brighter or darker, which colour it leans to).
When no model is available, or its answers are unusable, the same evidence
gives rule-based defect descriptions, so the agent always has something true
to say.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..detect.explanation import mask_location
from ..detect.result import Result


def _shape(mask: np.ndarray) -> str:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return "irregular"
    contour = max(contours, key=cv2.contourArea)
    (_, _), (w, h), _ = cv2.minAreaRect(contour)
    elongation = max(w, h) / max(1.0, min(w, h))
    area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
    circularity = 4 * np.pi * area / max(perimeter**2, 1e-6)
    if elongation >= 3:
        return "elongated"
    return "round" if circularity >= 0.7 else "irregular"


def region_evidence(result: Result, image: np.ndarray, reference: np.ndarray | None) -> list[dict]:
    """One dict per region; `image` and `reference` HxWx3 uint8 RGB (reference resized here)."""
    if reference is not None and reference.shape[:2] != image.shape[:2]:
        reference = cv2.resize(reference, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
    out = []
    for region in result.regions:
        mask = region.mask
        entry = {
            "position": mask_location(mask),  # named as every explanation names it
            "shape": _shape(mask),
            "area_percent": round(100.0 * region.area / mask.size, 2),
            "width_px": region.bbox[2] - region.bbox[0],
            "height_px": region.bbox[3] - region.bbox[1],
            "touches_edge": region.bbox[0] <= 1
            or region.bbox[1] <= 1
            or region.bbox[2] >= image.shape[1] - 1
            or region.bbox[3] >= image.shape[0] - 1,
            "score": round(region.score, 3),
        }
        if reference is not None:
            diff = image[mask].astype(np.float32).mean(axis=0) - reference[mask].astype(np.float32).mean(axis=0)
            entry["brightness_diff"] = round(float(diff.mean()), 1)  # grey levels, + brighter
            chroma = diff - diff.mean()
            entry["colour_shift"] = (
                "none" if np.abs(chroma).max() < 8 else ("red", "green", "blue")[int(np.argmax(chroma))]
            )
        out.append(entry)
    return out


def evidence_text(category: str, evidence: list[dict]) -> str:
    if not evidence:
        return f"The inspected {category} shows no region that differs clearly from the normal one."
    lines = [f"The inspected {category} differs from a normal one in {len(evidence)} region(s):"]
    for i, e in enumerate(evidence, start=1):
        text = (
            f"Region {i}: {e['position']}, {e['shape']}, {e['area_percent']}% of the image "
            f"({e['width_px']}x{e['height_px']} px)"
        )
        if "brightness_diff" in e:
            tone = "brighter" if e["brightness_diff"] > 0 else "darker"
            text += f", {abs(e['brightness_diff']):.0f} grey levels {tone} than the normal part"
            text += "" if e["colour_shift"] == "none" else f", shifted towards {e['colour_shift']}"
        if e["touches_edge"]:
            text += ", at the edge of the part"
        lines.append(text + ".")
    return "\n".join(lines)


def heuristic_descriptions(evidence: list[dict]) -> list[dict]:
    """Rule-based defect descriptions from the evidence (the agent's fallback)."""
    out = []
    for e in evidence:
        darker = e.get("brightness_diff", 0) < 0
        if e.get("colour_shift", "none") != "none":
            kind, look = "stain", {"red": "reddish", "green": "greenish", "blue": "bluish"}[e["colour_shift"]]
        elif e["shape"] == "elongated":
            kind, look = ("crack", "dark thin") if darker else ("scratch", "bright thin")
        elif e["touches_edge"] and darker:
            kind, look = "missing piece", "broken off"
        elif e["shape"] == "round" and darker:
            kind, look = "hole", "dark round"
        else:
            kind, look = "spot", "darker" if darker else "brighter"
        out.append({"type": kind, "location": e["position"], "appearance": look})
    return out
