"""The detector: zero-shot CLIP scoring, optional few-shot references, SAM regions.

    detector = Detector.from_bundle("bundles/edge")
    result = detector.detect(frame_bgr, "screw")          # Result: OK / NG / ERROR

OK frames pay for one CLIP image pass (text embeddings are cached); SAM runs only
on frames the CLIP gate finds suspicious.

A Detector is its parts (image encoder, prompt text, region refiner) and its
settings; `from_bundle` builds the parts, `with_settings` gives a detector with
other thresholds over the same parts. A detector's settings never change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ..bundle.loader import Bundle
from ..providers import triton_endpoint
from ..settings import DetectorSettings
from .branches import score_branches
from .encoders import SESSION_SETTINGS, ImageEncoder, NonFiniteError, require_finite, with_encoder_defaults
from .explanation import PixelMemory, rule_explanation
from .frames import ImageError, to_rgb_uint8
from .prompt_text import PromptText
from .reference_cache import cache_dir as reference_cache_dir
from .references import ReferenceMemory, content_key, memory_for
from .regions import find_regions, work_size
from .result import Result, verdict
from .sam import SamRefiner, has_sam
from .scoring import image_score, l2_normalize, sigma_at, upsample_smooth

__all__ = ["Detector", "NonFiniteError", "ReferenceMemory", "verdict"]

log = logging.getLogger("lineside.detector")

References = ReferenceMemory | Sequence[np.ndarray] | None
TRITON_REQUESTS = 8  # frames detect_batch sends a Triton server at once: lineside export triton's max batch


class Detector:
    """Built parts and settings. Usually made with `Detector.from_bundle(path, **settings)`.

    `encoder` an ImageEncoder (or anything with its interface); `text` a
    PromptText, or None for a patch encoder without CLIP's text tower (then every
    frame needs references); `refiner` a SamRefiner, or None to cut regions from
    the map's own contours.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        text: PromptText | None,
        refiner: SamRefiner | None,
        settings: DetectorSettings | None = None,
        *,
        bundle_id: str | None = None,
        bundle: Bundle | None = None,
    ):
        if text is not None and not encoder.clip:
            raise ValueError(f"prompt text needs a CLIP image encoder; {encoder.component.name} has no text space")
        self.encoder, self.text, self.refiner = encoder, text, refiner
        self._settings = with_encoder_defaults(settings or DetectorSettings(), encoder)  # logit_scale: the bundle's
        self.bundle = bundle  # where the parts came from (the language model, banks' default folder), if known
        self.bundle_id = bundle_id if bundle_id is not None else bundle.bundle_id if bundle is not None else ""
        self._settings_dict = self.settings.to_dict()
        self._precisions = {name: g["precision"] for name, g in self.graphs().items()}  # fixed with the sessions
        self._operating: dict | None = None  # how the threshold was set, when calibrated (`at`)
        self._last_memory: ReferenceMemory | None = None  # of the last list of references, by content
        self._pixels = PixelMemory()  # the references' grey levels, which the rule explanation measures against

    @classmethod
    def from_bundle(cls, path: Path | str, settings: DetectorSettings | None = None, **overrides) -> Detector:
        settings = replace(settings or DetectorSettings(), **overrides)
        bundle = Bundle.open(path)
        encoder = ImageEncoder.from_bundle(bundle, settings)
        # The language branch needs CLIP's two towers; a patch encoder alone is few-shot only.
        text = PromptText.from_bundle(bundle, settings) if encoder.clip else None
        refiner = SamRefiner.from_bundle(bundle, settings) if settings.use_sam else None
        detector = cls(encoder, text, refiner, settings, bundle=bundle)
        log.info("detector on %s, graphs: %s", bundle.path, detector.graphs())
        return detector

    def with_settings(self, settings: DetectorSettings) -> Detector:
        """A detector over the same parts with other settings (thresholds, weights, gates).

        Settings that the sessions were built with (SESSION_SETTINGS) cannot change
        here: build a new detector with `Detector.from_bundle`.
        """
        changed = [name for name in SESSION_SETTINGS if getattr(settings, name) != getattr(self.settings, name)]
        if settings.use_sam and self.refiner is None and self.bundle is not None and has_sam(self.bundle):
            changed.append("use_sam")  # SAM's sessions were never built
        if changed:
            raise ValueError(
                f"settings {', '.join(changed)} need new sessions; with_settings only changes the "
                "others: build a new detector with Detector.from_bundle(path, settings)"
            )
        text = self.text
        if text is not None and settings.prompt_dir != self.settings.prompt_dir:
            if settings.prompt_dir is None and self.bundle is None:
                raise ValueError("prompt_dir None means BUNDLE/prompts, but this detector was not built from a bundle")
            text = text.with_folder(settings.prompt_dir or self.bundle.path / "prompts")
        other = Detector(self.encoder, text, self.refiner, settings, bundle_id=self.bundle_id, bundle=self.bundle)
        other._pixels = self._pixels  # the references' pixels are the same whatever the thresholds
        return other

    def at(self, point) -> Detector:
        """This detector at a calibrated OperatingPoint (calibration.py): its threshold, and how it was set
        (the false-alarm mode, target and source) written into every result it gives."""
        other = self.with_settings(replace(self.settings, threshold=point.threshold))
        other._operating = {
            "mode": point.mode,
            "source": point.source,
            "target_false_alarm": point.target_false_alarm,
            "confidence": point.confidence,
            "images": point.images,
        }
        return other

    @property
    def settings(self) -> DetectorSettings:
        """Fixed for this detector's life: `with_settings` gives another detector."""
        return self._settings

    @property
    def providers(self) -> tuple[str, ...]:
        return self.encoder.providers

    def graphs(self) -> dict[str, dict]:
        """Every graph this detector runs: {name: {precision, providers, requested}}, providers as they are now."""
        parts = (self.encoder, self.text.encoder if self.text else None, self.refiner)  # stand-ins may have none
        return {name: g for part in parts if hasattr(part, "graphs") for name, g in part.graphs().items()}

    @property
    def has_language(self) -> bool:
        return self.text is not None

    # --- public -------------------------------------------------------------------

    def detect(self, image: np.ndarray, category: str, references: References = None, colour: str = "BGR") -> Result:
        """Score one frame. Bad input raises ValueError; a failed inference returns ERROR.

        `references`: a ReferenceMemory from `remember` (encoded once: the fast
        path), or known-good images in `colour` (encoded on the first call, and
        again whenever their content differs from the last list's), or None.
        """
        if not isinstance(category, str) or not category.strip():
            raise ImageError(f"category must be a non-empty name such as 'screw', got {category!r}")
        rgb = self._to_rgb(image, colour)
        refs = references if isinstance(references, ReferenceMemory) else self._convert_references(references, colour)
        try:
            memory = memory_for(refs, self.encoder, self._last_memory, self._build_memory)
            self._last_memory = memory or self._last_memory
            return self._detect(rgb, category, memory)
        except ValueError:
            raise
        except Exception as e:  # whatever broke, the frame must not pass as OK
            log.exception("inference failed on a %dx%d frame", rgb.shape[1], rgb.shape[0])
            return self.error_result(f"inference failed: {e}", category)

    def remember(self, images: Sequence[np.ndarray], colour: str = "BGR") -> ReferenceMemory:
        """Known-good images (each HxWx3 or HxW, in `colour`) -> the memory `detect` takes as `references`."""
        refs = self._convert_references(images, colour)
        if not refs:
            raise ValueError("remember needs at least one known-good image")
        return self._build_memory(refs)

    def remember_pixels(self, images: Sequence[np.ndarray], colour: str = "BGR") -> None:
        """Known-good images' grey levels, which NG explanations are measured against. `remember` keeps
        them itself; whoever builds a memory from encodings (serve's teaching) hands the images in here."""
        refs = self._convert_references(images, colour)
        if refs:
            self._pixels.add(content_key(refs), refs, work_size(*refs[0].shape[:2]))

    def _build_memory(self, rgb_images: list[np.ndarray]) -> ReferenceMemory:
        """RGB uint8 references -> their memory, shaped by coreset_ratio and nn_index, cached on disk by content."""
        s = self.settings
        cache = reference_cache_dir(s.reference_cache_dir, s.text_cache_dir)
        memory = ReferenceMemory.build(self.encoder, rgb_images, s.coreset_ratio, s.nn_index, cache, s.reference_window)
        self._pixels.add(memory.key, rgb_images, work_size(*rgb_images[0].shape[:2]))  # memory.key: the content key
        return memory

    def stream(
        self, frames: Iterable[np.ndarray], category: str, references: References = None, colour: str = "BGR"
    ) -> Iterator[Result]:
        """detect() over a sequence; a bad frame yields an ERROR result and the stream goes on."""
        references = self._remembered(references, colour)
        for frame in frames:
            try:
                yield self.detect(frame, category, references, colour)
            except ValueError as e:
                yield self.error_result(str(e), category)

    def detect_batch(
        self, images: Sequence[np.ndarray], category: str, references: References = None, colour: str = "BGR"
    ) -> list[Result]:
        """detect() over several frames at once, results in their order; a bad frame is an ERROR result.

        With a Triton server the frames go as concurrent requests (`concurrency` at a time), which its
        dynamic batcher runs as batches; on local sessions they run one after another, as `stream` does.
        """
        references = self._remembered(references, colour)

        def one(frame: np.ndarray) -> Result:
            try:
                return self.detect(frame, category, references, colour)
            except ValueError as e:
                return self.error_result(str(e), category)

        if self.concurrency == 1 or len(images) < 2:
            return [one(frame) for frame in images]
        with ThreadPoolExecutor(min(self.concurrency, len(images)), thread_name_prefix="detect-batch") as pool:
            return list(pool.map(one, images))

    @property
    def concurrency(self) -> int:
        """Frames worth sending at once: a Triton server batches concurrent requests, local sessions do not."""
        return TRITON_REQUESTS if triton_endpoint(self.settings.providers) is not None else 1

    def calibrate(
        self,
        normal_images: Sequence[np.ndarray],
        category: str,
        references: References = None,
        colour: str = "BGR",
        quantile: float = 1.0,
        margin: float = 0.02,
    ) -> float:
        """The NG threshold just above the `quantile` of known-good images' scores (nothing is changed).

        quantile 1.0 passes every calibration image (no false alarm on them); a
        lower quantile trades some false alarms on odd good parts for recall. Use it as
        `detector = detector.with_settings(replace(detector.settings, threshold=t))`.
        """
        if not normal_images:
            raise ValueError("calibrate needs at least one normal image")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile {quantile} must be in (0, 1]")
        references = self._remembered(references, colour)
        scores = [self.detect(img, category, references, colour).image_score for img in normal_images]
        threshold = min(1.0, float(np.quantile(scores, quantile)) + margin)
        log.info("calibrated %s on %d normal images: threshold %.4f", category, len(scores), threshold)
        return threshold

    def error_result(self, message: str, category: str) -> Result:
        """An ERROR result (score 1.0: never mistaken for a pass) carrying `message`."""
        return self._result(label="ERROR", image_score=1.0, anomaly_map=None, category=category, error=message)

    def _result(self, **fields) -> Result:
        """A Result with what made it: providers, each graph's precision, bundle id, settings."""
        return Result(
            **fields,
            providers=self.providers,
            precisions=dict(self._precisions),
            bundle_id=self.bundle_id,
            settings=dict(self._settings_dict),
            operating_point=self._operating,
        )

    # --- steps ----------------------------------------------------------------------

    def _to_rgb(self, image, colour: str) -> np.ndarray:
        return to_rgb_uint8(image, colour, self.settings.input_bits, self.settings.min_frame_side)

    def _convert_references(self, references, colour: str) -> list[np.ndarray] | None:
        """References as RGB uint8, or None when there are none."""
        if references is None or not len(references):
            return None
        try:
            return [self._to_rgb(r, colour) for r in references]
        except ImageError as e:
            raise ImageError(f"a reference image is unusable: {e}") from e

    def _remembered(self, references: References, colour: str) -> References:
        """A list of references as a memory, built once for the many frames to come; references that
        cannot be remembered are left as they are, for each detect() to report as it always does."""
        if references is None or isinstance(references, ReferenceMemory) or not len(references):
            return references
        try:
            return self.remember(references, colour)
        except Exception:  # a bad image (ValueError) or a failed encoder: detect() raises or returns ERROR
            return references

    def score_encoded(
        self,
        global_emb: np.ndarray,
        taps: list[np.ndarray],
        category: str,
        memory: ReferenceMemory | None,
        times: dict | None = None,
    ) -> tuple[float, np.ndarray]:
        """The image score and (H, W) model-size map of a frame the image graph has already encoded, exactly as
        `detect` scores it (before SAM and the verdict). Benchmarks score one encoding against many reference
        draws and settings through this, so what they measure is what runs on the line."""
        return self._score(global_emb, taps, category, memory, {} if times is None else times)[2:]

    def _score(self, global_emb, taps, category, memory, times) -> tuple:
        """-> (prompt text or None, branches, image score, model-size map); each stage's time into `times`."""
        s = self.settings
        where = self.bundle.path if self.bundle is not None else self.bundle_id
        text, grid, global_p, branches = score_branches(
            category, global_emb, taps, self.encoder.grid, self.text, memory, s, times, where
        )
        t = time.perf_counter()
        size = self.encoder.size
        model_map = upsample_smooth(grid, size, sigma_at(size[0], s.smoothing_sigma))
        score = image_score(global_p, model_map, s.map_weight, s.top_fraction)
        times["map"] = _ms(t)
        return text, branches, score, model_map

    def _detect(self, rgb: np.ndarray, category: str, memory: ReferenceMemory | None) -> Result:
        s, times = self.settings, {}
        t0 = time.perf_counter()
        global_emb, taps = self.encoder.encode(rgb)
        times["image_encoder"] = _ms(t0)
        text, branches, score, model_map = self._score(global_emb, taps, category, memory, times)

        t = time.perf_counter()
        work_hw = work_size(*rgb.shape[:2])
        work_map = cv2.resize(model_map, (work_hw[1], work_hw[0]), interpolation=cv2.INTER_LINEAR)
        times["map"] += _ms(t)

        regions, refiner, scored_map = [], "none", work_map  # the map as scored (find_regions refines work_map)
        if score >= s.sam_gate or float(model_map.max()) >= s.sam_gate:
            tokens = l2_normalize(np.mean(taps, axis=0))  # (N, D): the V-V tokens, averaged over taps
            regions, refiner, work_map = find_regions(
                rgb, work_map, tokens, self.encoder.grid, text, self.refiner, s, times
            )
        t = time.perf_counter()
        frame_map = cv2.resize(work_map, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        require_finite("scoring", score, frame_map, [(r.score, r.probability) for r in regions])
        times["output"] = _ms(t)
        times["total"] = _ms(t0)
        anomaly_map = np.clip(frame_map, 0, 1).astype(np.float32)
        label = verdict(score, s.threshold)
        explanation = None
        if label == "NG":  # measured now, written with the verdict (explanation.py)
            t = time.perf_counter()
            stats = self._pixels.get(memory.key if memory is not None else None)
            explanation = rule_explanation(rgb, regions, scored_map, s.threshold, score, category, stats)
            times["explanation"] = _ms(t)
        reference_set = None
        if memory is not None:
            reference_set = {"images": memory.count, "key": memory.key, "window": memory.window}
        return self._result(
            label=label,
            reference_set=reference_set,
            explanation=explanation,
            image_score=score,
            anomaly_map=anomaly_map,
            regions=regions,
            category=category,
            branches=branches,
            refiner=refiner,
            timings_ms=times,
        )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
