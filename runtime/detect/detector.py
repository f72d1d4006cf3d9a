"""The detector: zero-shot CLIP scoring, optional few-shot references, SAM regions.

    detector = Detector.from_bundle("bundles/edge")
    result = detector.detect(frame_bgr, "screw")          # Result: OK / NG / ERROR

OK frames pay for one CLIP image pass (text embeddings are cached); SAM runs only
on frames the CLIP gate finds suspicious.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from ..bundle.loader import Bundle
from .frames import ImageError, to_rgb_uint8
from .prompt_text import CategoryText, build_category_text
from .preprocess import clip_input
from .regions import candidates, explain, polygon, pool_tokens, work_size
from .result import Region, Result
from .sam import SamRefiner
from .scoring import (MIN_SCALE, abnormal_probability, calibrated, fuse, image_score, l2_normalize,
                      language_grid, normal_spread, reference_grid, sigma_at, upsample_smooth)  # fmt: skip
from ..settings import DetectorSettings
from .text_encoder import TextEncoder

log = logging.getLogger("lineside.detector")


class NonFiniteError(RuntimeError):
    """A stage produced NaN or inf: the frame cannot be judged, so it is an ERROR, never OK."""


def require_finite(stage: str, *arrays) -> None:
    """Raise NonFiniteError naming `stage` when any value is NaN or inf."""
    for array in arrays:
        values = np.asarray(array)
        if not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise NonFiniteError(f"{stage} produced {bad} non-finite value(s) of {values.size} (NaN or inf)")


@dataclass
class ReferenceMemory:
    """What the few-shot branch keeps of its normal references."""

    key: str  # content hash of the reference images
    globals: np.ndarray  # (R, D)
    taps: list[np.ndarray]  # per tap (R * N, D)
    spread: float  # normal patch-distance spread (scoring.normal_spread)
    global_spread: float  # largest leave-one-out global distance among references
    source: list | None = None  # the converted reference list it was last matched to (skips re-hashing)


class Detector:
    """One bundle, loaded once. Use `Detector.from_bundle(path, **settings)`."""

    def __init__(self, bundle: Bundle, settings: DetectorSettings):
        self.bundle = bundle
        self.settings = settings
        components = set(bundle.manifest.components)
        image_name = "clip_image" if "clip_image" in components else "patch_encoder"
        self.image_c = bundle.component(image_name)
        opts = {"threads": settings.threads, "trt_cache_dir": settings.trt_cache_dir, "trt_fp16": settings.trt_fp16,
                "strict_providers": settings.strict_providers}  # fmt: skip
        precision = bundle.precision_for(image_name, settings.precision)
        self.image = bundle.session(image_name, precision, settings.providers, **opts)
        # The language branch needs CLIP's two towers; a patch encoder alone is few-shot only.
        self.has_language = image_name == "clip_image" and "clip_text" in components
        self.text = TextEncoder(bundle, settings.providers, settings.text_cache_dir, **opts) \
            if self.has_language else None  # fmt: skip
        has_sam = {"sam_encoder", "sam_decoder"} <= set(bundle.manifest.components)
        self.sam = SamRefiner(bundle, settings.precision, settings.providers, **opts) \
            if settings.use_sam and has_sam else None  # fmt: skip
        self.prompt_dir = Path(settings.prompt_dir or bundle.path / "prompts")
        cfg = self.image_c.config
        self.grid = tuple(cfg["grid"])
        self.size = tuple(self.image_c.preprocessing["size"])
        self.taps = [t["output"] for t in cfg["taps"]]
        self.global_name = self.image_c.outputs[0].name
        self._categories: dict[str, CategoryText] = {}
        self._memory: ReferenceMemory | None = None
        self._refs_seen: tuple | None = None  # (caller's list, (length, colour), converted list)
        self._settings_cache: tuple = (None, {})
        log.info("detector on %s: clip %s on %s, refiner %s", bundle.path, precision,
                 ", ".join(self.image.providers), "sam" if self.sam else "contours")  # fmt: skip

    @classmethod
    def from_bundle(cls, path: Path | str, settings: DetectorSettings | None = None, **overrides) -> Detector:
        return cls(Bundle.open(path), replace(settings or DetectorSettings(), **overrides))

    @property
    def providers(self) -> tuple[str, ...]:
        return self.image.providers

    # --- public -------------------------------------------------------------------

    def detect(self, image: np.ndarray, category: str, references: Sequence[np.ndarray] | None = None,
               colour: str = "BGR") -> Result:  # fmt: skip
        """Score one frame. Bad input raises ValueError; a failed inference returns ERROR."""
        if not isinstance(category, str) or not category.strip():
            raise ImageError(f"category must be a non-empty name such as 'screw', got {category!r}")
        rgb = self._to_rgb(image, colour)
        refs = self._convert_references(references, colour)
        try:
            return self._detect(rgb, category, refs)
        except ValueError:
            raise
        except Exception as e:  # whatever broke, the frame must not pass as OK
            log.exception("inference failed on a %dx%d frame", rgb.shape[1], rgb.shape[0])
            return self.error_result(f"inference failed: {e}", category)

    def _to_rgb(self, image, colour: str) -> np.ndarray:
        return to_rgb_uint8(image, colour, self.settings.input_bits, self.settings.min_frame_side)

    def stream(self, frames: Iterable[np.ndarray], category: str, references=None, colour: str = "BGR") -> Iterator[Result]:
        """detect() over a sequence; a bad frame yields an ERROR result and the stream goes on."""
        for frame in frames:
            try:
                yield self.detect(frame, category, references, colour)
            except ValueError as e:
                yield self.error_result(str(e), category)

    def calibrate(self, normal_images: Sequence[np.ndarray], category: str, references=None,
                  colour: str = "BGR", quantile: float = 1.0, margin: float = 0.02) -> float:  # fmt: skip
        """Set the NG threshold just above the `quantile` of known-good images' scores.

        quantile 1.0 passes every calibration image (no false alarm on them); a
        lower quantile trades some false alarms on odd good parts for recall.
        """
        if not normal_images:
            raise ValueError("calibrate needs at least one normal image")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile {quantile} must be in (0, 1]")
        scores = [self.detect(img, category, references, colour).image_score for img in normal_images]
        threshold = min(1.0, float(np.quantile(scores, quantile)) + margin)
        self.settings = replace(self.settings, threshold=threshold)
        log.info("calibrated %s on %d normal images: threshold %.4f", category, len(scores), threshold)
        return threshold

    # --- steps ----------------------------------------------------------------------

    def error_result(self, message: str, category: str) -> Result:
        """An ERROR result (score 1.0: never mistaken for a pass) carrying `message`."""
        return Result("ERROR", 1.0, None, category=category, providers=self.providers,
                      bundle_id=self.bundle.bundle_id, settings=self._settings_dict(), error=message)  # fmt: skip

    def _settings_dict(self) -> dict:
        """The settings as JSON, rebuilt only when they change (calibrate replaces them)."""
        if self._settings_cache[0] is not self.settings:
            self._settings_cache = (self.settings, self.settings.to_dict())
        return dict(self._settings_cache[1])

    def category_text(self, category: str) -> CategoryText:
        if category not in self._categories:
            self._categories[category] = build_category_text(self.text, category, self.prompt_dir)
        return self._categories[category]

    def encode(self, rgb: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """HxWx3 uint8 RGB -> global embedding (D,) and patch tokens per tap [(N, D)]."""
        out = self.image.run({self.image_c.inputs[0].name: clip_input(rgb, self.image_c.preprocessing)})
        global_emb, taps = out[self.global_name][0], [out[name][0] for name in self.taps]
        require_finite("the image encoder", global_emb, *taps)
        return global_emb, taps

    def _convert_references(self, references, colour: str) -> list[np.ndarray] | None:
        """References as RGB uint8; the same list passed again (serve, stream) is converted once.

        To change references, pass a new list (editing a list in place is not seen).
        """
        if not references:
            return None
        seen = self._refs_seen
        if seen is not None and seen[0] is references and seen[1] == (len(references), colour):
            return seen[2]
        try:
            converted = [self._to_rgb(r, colour) for r in references]
        except ImageError as e:
            raise ImageError(f"a reference image is unusable: {e}") from e
        self._refs_seen = (references, (len(references), colour), converted)
        return converted

    def _reference_memory(self, refs: list[np.ndarray]) -> ReferenceMemory:
        """Global embeddings, per-tap token memories and their normal spreads, cached by content."""
        if self._memory is not None and self._memory.source is refs:
            return self._memory
        digest = hashlib.blake2b(digest_size=16)
        for r in refs:
            digest.update(str(r.shape).encode())
            digest.update(np.ascontiguousarray(r).data)
        key = digest.hexdigest()
        if self._memory is None or self._memory.key != key:
            encoded = [self.encode(r) for r in refs]  # other sizes are resized like any frame
            globals_ = np.stack([g for g, _ in encoded])  # (R, D)
            taps = [np.concatenate([t[i] for _, t in encoded]) for i in range(len(self.taps))]  # (R * N, D)
            if len(refs) > 1:
                sims = globals_ @ globals_.T
                np.fill_diagonal(sims, -1.0)
                global_spread = max(float(((1.0 - sims.max(axis=1)) / 2.0).max()), MIN_SCALE)
            else:
                global_spread = MIN_SCALE
            self._memory = ReferenceMemory(key, globals_, taps, normal_spread([t for _, t in encoded]), global_spread)
        self._memory.source = refs
        return self._memory

    def _detect(self, rgb: np.ndarray, category: str, refs: list[np.ndarray] | None) -> Result:
        s, times = self.settings, {}
        t0 = time.perf_counter()
        global_emb, taps = self.encode(rgb)
        times["image_encoder"] = _ms(t0)

        grid, global_p, text, branches = None, 0.0, None, []
        if self.has_language:
            t = time.perf_counter()
            text = self.category_text(category)
            require_finite("the text embeddings", text.classes, text.labels)
            grid = language_grid(taps, text.classes, s.logit_scale, self.grid)
            global_p = float(abnormal_probability(global_emb, text.classes, s.logit_scale))
            branches.append("language")
            times["language"] = _ms(t)
        elif not refs:
            raise ValueError(f"bundle {self.bundle.path} has no language branch (no CLIP text graph): "
                             "give normal reference images (--references DIR or --teach N)")  # fmt: skip
        if refs:
            t = time.perf_counter()
            memory = self._reference_memory(refs)
            ref_grid = reference_grid(taps, memory.taps, self.grid, memory.spread)
            ref_global_p = float(calibrated((1.0 - (memory.globals @ global_emb).max()) / 2.0, memory.global_spread))
            weight = s.reference_weight if grid is not None else 1.0
            grid = fuse(grid, ref_grid, weight) if grid is not None else ref_grid
            global_p = (1 - weight) * global_p + weight * ref_global_p
            branches.append("reference")
            times["reference"] = _ms(t)

        t = time.perf_counter()
        model_map = upsample_smooth(grid, self.size, sigma_at(self.size[0], s.smoothing_sigma))
        score = image_score(global_p, model_map, s.map_weight)
        work_hw = work_size(*rgb.shape[:2])
        work_map = cv2.resize(model_map, (work_hw[1], work_hw[0]), interpolation=cv2.INTER_LINEAR)
        times["map"] = _ms(t)

        regions, refiner = [], "none"
        if score >= s.sam_gate or float(model_map.max()) >= s.sam_gate:
            regions, refiner, work_map = self._regions(rgb, work_map, taps, text, times)
        t = time.perf_counter()
        frame_map = cv2.resize(work_map, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        frame_regions = [self._to_frame(r, rgb.shape[:2], work_hw) for r in regions]
        require_finite("scoring", score, frame_map, [(r.score, r.probability) for r in frame_regions])
        times["output"] = _ms(t)
        times["total"] = _ms(t0)
        return Result(
            verdict(score, s.threshold), score, np.clip(frame_map, 0, 1).astype(np.float32),
            frame_regions, category, tuple(branches), refiner, times, self.providers,
            self.bundle.bundle_id, self._settings_dict(),
        )  # fmt: skip

    def _regions(self, rgb, work_map, taps, text: CategoryText | None, times) -> tuple[list[dict], str, np.ndarray]:
        """Candidates -> masks (SAM or the components themselves) -> explained, refined map."""
        s = self.settings
        t = time.perf_counter()
        found = candidates(work_map, s.region_threshold, s.min_region_frac, s.max_region_frac, s.max_regions)
        times["candidates"] = _ms(t)
        if not found:
            return [], "none", work_map
        if self.sam is not None:
            t = time.perf_counter()
            embeddings = self.sam.embed(rgb)
            times["sam_encoder"] = _ms(t)
            t = time.perf_counter()
            masks = [(m.mask, m.iou) for m in self.sam.masks(embeddings, work_map.shape, found)
                     if self._keep_sam_mask(m.mask, m.iou, work_map)]  # fmt: skip
            times["sam_decoder"] = _ms(t)
            refiner = "sam"
        else:
            masks, refiner = [(c.mask, None) for c in found], "contours"
        t = time.perf_counter()
        tokens = l2_normalize(np.mean(taps, axis=0))  # (N, D): the V-V tokens, averaged over taps
        regions, region_map = [], np.zeros_like(work_map)
        for mask, iou in masks:
            pooled = pool_tokens(tokens, mask, self.grid)
            if pooled is None:
                continue
            if text is not None:
                score, prompt, prob = explain(pooled, text.labels, list(text.texts), s.logit_scale)
            else:  # few-shot only: the region is as abnormal as the map says, with no words for it
                score, prompt, prob = float(work_map[mask].mean()), "", 0.0
            regions.append({"mask": mask, "score": score, "prompt": prompt, "probability": prob,
                            "refiner": refiner, "sam_iou": iou})  # fmt: skip
            region_map = np.maximum(region_map, mask * score)
        if regions:
            work_map = ((1 - s.refine_mix) * work_map + s.refine_mix * region_map).astype(np.float32)
        times["explain"] = _ms(t)
        return regions, refiner, work_map

    def _keep_sam_mask(self, mask: np.ndarray, iou: float, work_map: np.ndarray) -> bool:
        s = self.settings
        area = mask.sum() / mask.size
        if iou < s.sam_min_iou or not s.min_region_frac <= area <= s.max_region_frac:
            return False
        return float(work_map[mask].mean()) >= s.sam_min_mass

    @staticmethod
    def _to_frame(region: dict, frame_hw: tuple[int, int], work_hw: tuple[int, int]) -> Region:
        mask = region["mask"]
        full = cv2.resize(mask.astype(np.uint8), (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST) > 0
        ys, xs = np.nonzero(full)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
        scale = (frame_hw[1] / work_hw[1], frame_hw[0] / work_hw[0])
        return Region(full, bbox, polygon(mask, scale), int(full.sum()), region["score"], region["prompt"],
                      region["probability"], region["refiner"], region["sam_iou"])  # fmt: skip


def verdict(score: float, threshold: float) -> str:
    """NG at or above the threshold, OK below it, ERROR when the score is not a number."""
    if not math.isfinite(score):
        return "ERROR"
    return "NG" if score >= threshold else "OK"


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
