"""The operating point: the NG threshold that known-good images give for a target false-alarm rate.

    point = calibrate(good_scores, target_false_alarm=0.01)      # pure numbers
    point, detector = calibrate_detector(detector, good_images, "cell", references)
    print(point.describe())   # threshold 0.734 from 300 good images ...: false alarms 0.7% expected (95%: ...)

The threshold is put just above the j-th highest of n good scores, j the largest
with j / (n + 1) <= target. For a new good image exchangeable with the
calibration images, its score's rank among them is uniform, so the chance it
reaches the threshold is exactly j / (n + 1) on average; the false-alarm rate
this particular threshold will have on the line is distributed Beta(j, n + 1 - j)
(order statistics), whose central interval is the uncertainty reported (the same
upper bound as Clopper-Pearson for the j - 1 calibration images at or above it).
With fewer than 1 / target - 1 images no threshold can promise the target: the
threshold goes above the highest good score and the point says it is not enough.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it is expected to do, with how it was set."""

    threshold: float
    source: str  # how it was set: "setting", "calibrate DIR", "taught frames (leave one out)", ...
    target_false_alarm: float | None = None  # None: the threshold was given, not calibrated
    images: int = 0  # good images it was calibrated on
    false_alarms: int = 0  # of them at or above the threshold
    expected_false_alarm: float | None = None  # the mean false-alarm rate on new good images
    false_alarm_interval: tuple[float, float] | None = None  # central CONFIDENCE interval of that rate
    reachable: bool | None = None  # enough images for the target: at least images_needed(target)
    defective: int = 0  # labelled defective images scored, when given
    caught: int = 0  # of them at or above the threshold
    catch_interval: tuple[float, float] | None = None  # Clopper-Pearson CONFIDENCE interval of the catch rate

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line for logs and commands."""
        text = f"threshold {self.threshold:.4f} ({self.source})"
        if self.expected_false_alarm is None:
            return text
        lo, hi = self.false_alarm_interval
        text += (
            f": {self.false_alarms} of {self.images} good images at or above it; false alarms "
            f"{100 * self.expected_false_alarm:.2f}% expected ({100 * CONFIDENCE:.0f}% interval "
            f"{100 * lo:.2f}-{100 * hi:.2f}%), target {100 * self.target_false_alarm:.2f}%"
        )
        if not self.reachable:
            text += f" (out of reach: {images_needed(self.target_false_alarm)} good images needed at least)"
        if self.defective:
            lo, hi = self.catch_interval
            rate = 100 * self.caught / self.defective
            text += f"; caught {self.caught} of {self.defective} defective ({rate:.1f}%, "
            text += f"interval {100 * lo:.1f}-{100 * hi:.1f}%)"
        return text


def calibrate(
    good_scores: Sequence[float],
    target_false_alarm: float = 0.01,
    source: str = "calibration images",
    defective_scores: Sequence[float] | None = None,
) -> OperatingPoint:
    """Known-good image scores -> the OperatingPoint for `target_false_alarm` (see the module's docstring);
    `defective_scores`, when given, add the catch rate at that threshold."""
    if not 0.0 < target_false_alarm < 1.0:
        raise ValueError(f"false-alarm target {target_false_alarm} must be in (0, 1)")
    scores = np.sort(np.asarray(good_scores, np.float64))[::-1]  # highest first
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"calibration needs finite scores of at least one good image, got {scores.size} scores")
    n = scores.size
    j = min(n, math.floor(target_false_alarm * (n + 1) + 1e-9))  # alarms expected at j / (n + 1)
    if j == 0:  # too few images for the target: above every good score
        threshold = float(np.nextafter(scores[0], np.inf))
        j = 1
    else:
        threshold = float(np.nextafter(scores[j - 1], np.inf))
    threshold = min(threshold, 1.0)
    alarms = int((scores >= threshold).sum())
    interval = (beta_quantile((1 - CONFIDENCE) / 2, j, n + 1 - j), beta_quantile((1 + CONFIDENCE) / 2, j, n + 1 - j))
    point = OperatingPoint(
        threshold, source, target_false_alarm, n, alarms, j / (n + 1), interval, j / (n + 1) <= target_false_alarm
    )
    if defective_scores is not None and len(defective_scores):
        caught = int((np.asarray(defective_scores, np.float64) >= threshold).sum())
        point = replace(
            point,
            defective=len(defective_scores),
            caught=caught,
            catch_interval=clopper_pearson(caught, len(defective_scores)),
        )
    return point


def fixed(threshold: float, source: str = "setting") -> OperatingPoint:
    """The operating point of a threshold that was given, not calibrated."""
    return OperatingPoint(float(threshold), source)


def images_needed(target_false_alarm: float) -> int:
    """The fewest good images that can set a threshold whose expected false-alarm rate, 1 / (n + 1) at
    best (above every one of them), is within the target."""
    return math.ceil(1.0 / target_false_alarm - 1e-9) - 1


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """Exact CONFIDENCE interval of a binomial rate, k successes in n trials."""
    alpha = 1 - CONFIDENCE
    low = 0.0 if k == 0 else beta_quantile(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else beta_quantile(1 - alpha / 2, k + 1, n - k)
    return low, high


def beta_quantile(q: float, a: int, b: int) -> float:
    """The q-quantile of Beta(a, b) for whole a, b >= 1, by bisection (no scipy in the runtime):
    P(Beta(a, b) <= p) = P(Binomial(a + b - 1, p) >= a)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if binomial_tail(a, a + b - 1, mid) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k), summed in log space."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def calibrate_detector(
    detector,
    good_images,
    category: str,
    references=None,
    colour: str = "BGR",
    target_false_alarm: float = 0.01,
    source: str = "calibration images",
):
    """Score `good_images` with `detector` (and `references`) -> (OperatingPoint, the detector with its threshold)."""
    if not len(good_images):
        raise ValueError("calibration needs at least one known-good image")
    from .references import ReferenceMemory

    if references is not None and not isinstance(references, ReferenceMemory) and len(references):
        references = detector.remember(references, colour)  # encoded once for every image
    scores = []
    for image in good_images:
        result = detector.detect(image, category, references, colour)
        if result.label == "ERROR":
            raise ValueError(f"a calibration image could not be scored: {result.error}")
        scores.append(result.image_score)
    point = calibrate(scores, target_false_alarm, source)
    return point, detector.with_settings(replace(detector.settings, threshold=point.threshold))


def leave_one_out(
    detector,
    images_rgb: list[np.ndarray],
    encoded: list,
    category: str,
    target_false_alarm: float = 0.01,
    source: str = "taught frames, leave one out",
):
    """Known-good references scored each against a memory of the others -> (OperatingPoint, detector).

    A reference scored against a memory holding itself would score zero; without
    itself it scores like a new good part seen with one reference fewer.
    `encoded`: each image's ImageEncoder.encode output, so nothing is encoded twice.
    """
    from .references import ReferenceMemory, content_key
    from .registration import resolve_window

    if len(images_rgb) < 2:
        raise ValueError("calibrating on taught frames needs at least two of them")
    s, scores = detector.settings, []
    window = resolve_window(s.reference_window, [t for _, t in encoded], detector.encoder.grid)  # once, for all
    for i, image in enumerate(images_rgb):
        others = [e for k, e in enumerate(encoded) if k != i]
        key = content_key([im for k, im in enumerate(images_rgb) if k != i])
        memory = ReferenceMemory.from_encoded(
            key,
            detector.encoder.identity,
            others,
            s.coreset_ratio,
            s.nn_index,
            window,
            detector.encoder.grid,
        )
        result = detector.detect(image, category, memory, colour="RGB")
        if result.label == "ERROR":
            raise ValueError(f"a taught frame could not be scored: {result.error}")
        scores.append(result.image_score)
    point = calibrate(scores, target_false_alarm, source)
    return point, detector.with_settings(replace(detector.settings, threshold=point.threshold))
