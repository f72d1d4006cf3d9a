"""The rule explanation of an NG result: measured, at once, written with the verdict.

A quality engineer acting on an NG needs to know where the defect is, how big,
how far it lies from normal and what it looks like. Each of those is measured
here from the frame against the known-good references at the same pixels (or,
without references, against the part around the region), never guessed:

    where      one of nine names of a 3x3 grid over the frame (LOCATIONS), from the
               centroid of the pixels that differ
    size       % of the frame the region covers
    contrast   mean difference of the defect's pixels (the group of region pixels that
               differs most, DEVIATING_SD or more) in units of the references' own spread
               there (z, "sd"); darker or brighter by its sign
    shape      line-like or blob-like, from the slenderness of the differing pixels
               (length^2 / area of their minimum-area rectangle's long side)
    prompt     in the language branch, the defect prompt the region matches and its probability

Only regions whose anomaly map reaches the NG threshold are described as
defects; when none does, the strongest one is, and the text says it is below
the threshold. The same dict (`explanation`) is what a language model may later
rephrase: its sentence is checked against these fields (runtime/prompts/checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LOCATIONS = (
    ("upper left", "top centre", "upper right"),
    ("centre left", "centre", "centre right"),
    ("lower left", "bottom centre", "lower right"),
)
STD_FLOOR = 4.0  # grey levels: a spread below this is sensor noise, not the part's own variation
TONE_SD = 1.0  # |z| from which a region is called darker or brighter
DEVIATING_SD = 2.0  # |z| of the pixels that count as changed (their shape and centroid describe the defect)
LINE_SLENDERNESS = 4.0  # length^2 / area from which the changed pixels are line-like (a disc is 1.27)
MAX_DESCRIBED = 3  # regions named in the text (all of them stay in "regions")


def location_name(x: float, y: float) -> str:
    """(x, y) as fractions of the frame's width and height -> one of the nine LOCATIONS."""
    col, row = min(2, max(0, int(x * 3))), min(2, max(0, int(y * 3)))
    return LOCATIONS[row][col]


def mask_location(mask: np.ndarray) -> str:
    """An (h, w) mask's centroid as one of the nine LOCATIONS ("centre" when the mask is empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return "centre"
    return location_name((xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0])


def gray(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB -> (h, w) float32 grey levels at `hw` (area-averaged)."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    return cv2.resize(g, (hw[1], hw[0]), interpolation=cv2.INTER_AREA).astype(np.float32)


@dataclass(frozen=True)
class PixelStats:
    """The references' grey level per pixel: mean and spread (h, w) float32, at one working size."""

    mean: np.ndarray
    std: np.ndarray
    count: int

    @classmethod
    def of(cls, rgb_images: list[np.ndarray], hw: tuple[int, int]) -> PixelStats:
        """Known-good HxWx3 uint8 RGB images (any sizes: resized to `hw`) -> their statistics."""
        stack = np.stack([gray(im, hw) for im in rgb_images])  # (R, h, w)
        return cls(stack.mean(axis=0), stack.std(axis=0), len(rgb_images))

    def at(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) at `hw`, the std floored at STD_FLOOR."""
        mean, std = self.mean, self.std
        if mean.shape != tuple(hw):
            mean = cv2.resize(mean, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
            std = cv2.resize(std, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        return mean, np.maximum(std, STD_FLOOR)


def work_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A frame-size bool mask at `hw`; any covered share of a pixel counts (thin regions survive)."""
    if mask.shape == tuple(hw):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_AREA) > 0


def _surroundings(g: np.ndarray, mask: np.ndarray, others: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the part around a region (a ring a region's size wide), other regions left out."""
    side = int(max(3, np.sqrt(mask.sum())))
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool) & ~others
    values = g[ring] if ring.sum() >= 16 else g[~others] if (~others).sum() >= 16 else g.reshape(-1)
    return float(values.mean()), max(float(values.std()), STD_FLOOR)


def _changed(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The defect's own pixels: of the groups of region pixels that differ by DEVIATING_SD (brighter or
    darker), the one that differs most in all (sum of |z|); empty when none does."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    best, weight = np.zeros_like(mask, dtype=bool), 0.0
    for changed in ((z >= DEVIATING_SD) & grown, (z <= -DEVIATING_SD) & grown):
        count, labels = cv2.connectedComponents(changed.astype(np.uint8), connectivity=8)
        if count <= 1:
            continue
        sums = np.bincount(labels.reshape(-1), weights=np.abs(z).reshape(-1), minlength=count)[1:]
        if sums.max() > weight:
            weight, best = float(sums.max()), labels == 1 + int(np.argmax(sums))
    return best


def shape_of(pixels: np.ndarray) -> tuple[str, float, float]:
    """(line-like or blob-like, slenderness, elongation) of a bool mask's pixels."""
    ys, xs = np.nonzero(pixels)
    if len(xs) < 3:
        return "blob-like", 1.0, 1.0
    (_, _), (w, h), _ = cv2.minAreaRect(np.stack([xs, ys], axis=1).astype(np.float32))
    long, short = max(w, h) + 1.0, min(w, h) + 1.0  # +1: pixels have a width
    slenderness = long * long / len(xs)
    kind = "line-like" if slenderness >= LINE_SLENDERNESS else "blob-like"
    return kind, round(float(slenderness), 2), round(float(long / short), 2)


def describe_region(g, mask, mean, std, others, region_map, extra: dict) -> dict:
    """One region's measured evidence. `g` grey frame, `mask` the region, `mean`/`std` the references
    at each pixel (None: the surroundings stand in), `others` every region's pixels, all (h, w)."""
    if mean is None:
        around, spread = _surroundings(g, mask, others)
        z = (g - around) / spread
    else:
        z = (g - mean) / std
    changed = _changed(z, mask)
    where = changed if changed.sum() >= 6 else mask  # the defect itself, else the whole region
    contrast = float(z[where].mean()) if where.any() else 0.0
    kind, slenderness, elongation = shape_of(where)
    tone = "darker" if contrast <= -TONE_SD else "brighter" if contrast >= TONE_SD else "similar in brightness"
    entry = {
        "location": mask_location(where),
        "area_percent": round(100.0 * float(mask.mean()), 2),
        "contrast_sd": round(contrast, 2),
        "tone": tone,
        "shape": kind,
        "slenderness": slenderness,
        "elongation": elongation,
        "map_peak": round(float(region_map[mask].max()), 4) if mask.any() else 0.0,
    }
    return entry | extra


def rule_explanation(
    rgb: np.ndarray,
    regions: list,
    work_map: np.ndarray,
    threshold: float,
    score: float,
    category: str,
    stats: PixelStats | None,
) -> dict:
    """The explanation dict of an NG frame: {"text", "origin": "rules", "basis", "regions": [...]}.

    `rgb` HxWx3 uint8 RGB, `regions` the Result's Regions (frame-size masks),
    `work_map` (h, w) the anomaly map at work size, `stats` the references' PixelStats or None.
    """
    hw = work_map.shape
    g = gray(rgb, hw)
    mean, std = stats.at(hw) if stats is not None else (None, None)
    masks = [work_mask(r.mask, hw) for r in regions]
    others = np.logical_or.reduce(masks) if masks else np.zeros(hw, bool)
    entries = []
    for region, mask in zip(regions, masks):
        extra = {"prompt": region.prompt, "prompt_probability": round(float(region.probability), 3)}
        entries.append(describe_region(g, mask, mean, std, others, work_map, extra if region.prompt else {}))
    chosen = [e for e in entries if e["map_peak"] >= threshold]
    if not chosen and entries:
        chosen = [max(entries, key=lambda e: e["map_peak"]) | {"below_threshold": True}]
    chosen.sort(key=lambda e: (-e["map_peak"], -abs(e["contrast_sd"])))
    basis = "references" if stats is not None else "surroundings"
    return {
        "text": explanation_text(category, chosen, score, threshold, basis),
        "origin": "rules",
        "basis": basis,
        "regions": chosen,
    }


def region_phrase(e: dict, basis: str) -> str:
    """'upper left: a darker line-like mark, 0.4% of the frame, 5.1 sd darker than the references'."""
    against = "the references" if basis == "references" else "the part around it"
    if e["tone"] == "similar in brightness":
        look = f"a {e['shape']} change in texture, brightness within {abs(e['contrast_sd']):.1f} sd of {against}"
    else:
        look = f"a {e['tone']} {e['shape']} mark, {abs(e['contrast_sd']):.1f} sd {e['tone']} than {against}"
    text = f"{e['location']}: {look}, {e['area_percent']:.2g}% of the frame"
    if e.get("prompt"):
        text += f"; closest prompt '{e['prompt']}' ({e['prompt_probability']:.2f})"
    if e.get("below_threshold"):
        text += " (the strongest region, below the NG threshold on its own)"
    return text


def explanation_text(category: str, regions: list[dict], score: float, threshold: float, basis: str) -> str:
    """One plain sentence per described region, strongest first."""
    obj = category.replace("_", " ") or "part"
    head = f"NG {obj}, score {score:.2f} (threshold {threshold:.2f})"
    if not regions:
        return f"{head}: no single region stands out; the difference is spread over the part."
    shown = regions[:MAX_DESCRIBED]
    more = f" (and {len(regions) - len(shown)} weaker)" if len(regions) > len(shown) else ""
    count = "1 region" if len(regions) == 1 else f"{len(regions)} regions{more}"
    return f"{head}, {count}. " + " ".join(f"{region_phrase(e, basis)}." for e in shown)


def geometric_explanation(result) -> dict:
    """The fallback for an NG Result built without pixels (not by the detector): where and how big only."""
    entries = []
    for r in result.regions:
        h, w = r.mask.shape[:2]
        entries.append({"location": mask_location(r.mask), "area_percent": round(100.0 * r.area / max(1, h * w), 2)})
    text = f"NG {result.category or 'part'}: " + (
        "; ".join(f"{e['location']}, {e['area_percent']:.2g}% of the frame" for e in entries) or "no region stands out"
    )
    return {"text": text + ".", "origin": "rules", "basis": "geometry", "regions": entries}


def skipped(reason: str) -> dict:
    """The explanation of an EXPLANATION line that could not be made: queue full, serve stopping, a failure."""
    return {"text": "", "origin": "skipped", "reason": str(reason), "regions": []}


class PixelMemory:
    """The references' PixelStats by their content key (ReferenceMemory.key), the last few reference sets only."""

    def __init__(self, keep: int = 4):
        self.keep, self.stats = keep, {}

    def add(self, key: str, rgb_images: list[np.ndarray], hw: tuple[int, int]) -> None:
        if key not in self.stats:
            self.stats[key] = PixelStats.of(rgb_images, hw)
            while len(self.stats) > self.keep:
                self.stats.pop(next(iter(self.stats)))

    def get(self, key: str | None) -> PixelStats | None:
        return self.stats.get(key) if key else None
