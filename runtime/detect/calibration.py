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

That is the *expected* mode: right on average over many calibrations, but one
calibration's rate can lie well above the target (the interval says how far).
The *guarantee* mode bounds it instead: the threshold is put just above the j-th
highest good score for the largest j with P(Beta(j, n + 1 - j) <= target) >=
confidence, so that the line's false-alarm rate is at or below the target with
that confidence, whatever the distribution of good scores (distribution-free:
only exchangeability). It costs catch rate, and good parts: for 5% at 95% it
needs 59 with none above the threshold (0.95^59 < 0.05), and with fewer it
refuses, saying how many it needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

CONFIDENCE = 0.95
MODES = ("expected", "guarantee")  # what the threshold promises about the false-alarm rate (module docstring)


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
    mode: str = "expected"  # "expected" (the mean rate at the target) or "guarantee" (bounded with `confidence`)
    confidence: float | None = None  # guarantee: P(false-alarm rate <= target) at least this

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
        if self.mode == "guarantee":
            text += f" guaranteed with {100 * self.confidence:.0f}% confidence"
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
    mode: str = "expected",
    confidence: float = CONFIDENCE,
) -> OperatingPoint:
    """Known-good image scores -> the OperatingPoint for `target_false_alarm` in `mode` (see the module's
    docstring); `defective_scores`, when given, add the catch rate at that threshold. In guarantee mode
    too few scores raise ValueError naming how many good images the target and confidence need."""
    if not 0.0 < target_false_alarm < 1.0:
        raise ValueError(f"false-alarm target {target_false_alarm} must be in (0, 1)")
    if mode not in MODES:
        raise ValueError(f"false-alarm mode {mode!r}: use one of {', '.join(MODES)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"false-alarm confidence {confidence} must be in (0, 1)")
    scores = np.sort(np.asarray(good_scores, np.float64))[::-1]  # highest first
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"calibration needs finite scores of at least one good image, got {scores.size} scores")
    n = scores.size
    if mode == "guarantee":
        require_enough(n, target_false_alarm, mode, confidence)
        j = guaranteed_rank(n, target_false_alarm, confidence)
    else:
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
    if mode == "guarantee":
        point = replace(point, mode=mode, confidence=confidence)
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


def guaranteed_rank(n: int, target_false_alarm: float, confidence: float = CONFIDENCE) -> int:
    """The largest j such that a threshold just above the j-th highest of n good scores has a false-alarm
    rate at most `target_false_alarm` with probability at least `confidence`; 0 when not even the highest
    does. That rate is Beta(j, n + 1 - j), so the condition is P(Binomial(n, target) >= j) >= confidence,
    which only falls as j grows."""
    holds = np.nonzero(_tails(n, target_false_alarm)[1:] >= confidence)[0]
    return int(holds[-1] + 1) if holds.size else 0


def images_guaranteed(target_false_alarm: float, confidence: float = CONFIDENCE) -> int:
    """The fewest good images whose highest score bounds the false-alarm rate at the target with
    `confidence`: the least n with (1 - target)^n <= 1 - confidence (59 for 5% at 95%)."""
    return math.ceil(math.log(1.0 - confidence) / math.log1p(-target_false_alarm) - 1e-9)


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
    """P(Binomial(n, p) >= k)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return float(min(1.0, _tails(n, p)[k]))


def _tails(n: int, p: float) -> np.ndarray:
    """tails[j] = P(Binomial(n, p) >= j) for j = 0..n, 0 < p < 1: the log pmf from the ratio of neighbouring
    binomial coefficients (no factorials to overflow), summed from the top in float64."""
    i = np.arange(n + 1)
    log_pmf = np.cumsum(np.r_[0.0, np.log(n - i[:-1]) - np.log(i[1:])])  # log C(n, i)
    log_pmf += i * math.log(p) + (n - i) * math.log1p(-p)
    pmf = np.exp(log_pmf - log_pmf.max())
    return np.cumsum(pmf[::-1])[::-1] / pmf.sum()


def calibrate_detector(
    detector,
    good_images,
    category: str,
    references=None,
    colour: str = "BGR",
    target_false_alarm: float = 0.01,
    source: str = "calibration images",
    mode: str = "expected",
    confidence: float = CONFIDENCE,
):
    """Score `good_images` with `detector` (and `references`) -> (OperatingPoint, the detector running at it).
    In guarantee mode, too few images are refused before any is scored."""
    if not len(good_images):
        raise ValueError("calibration needs at least one known-good image")
    require_enough(len(good_images), target_false_alarm, mode, confidence, f"{source} gives {len(good_images)}")
    from .references import ReferenceMemory

    if references is not None and not isinstance(references, ReferenceMemory) and len(references):
        references = detector.remember(references, colour)  # encoded once for every image
    scores = []
    for image in good_images:
        result = detector.detect(image, category, references, colour)
        if result.label == "ERROR":
            raise ValueError(f"a calibration image could not be scored: {result.error}")
        scores.append(result.image_score)
    point = calibrate(scores, target_false_alarm, source, mode=mode, confidence=confidence)
    return point, detector.at(point)


def require_enough(n: int, target: float, mode: str, confidence: float = CONFIDENCE, given: str = "") -> None:
    """Refuse, in one line, a guarantee that `n` good images cannot give (before anything is scored);
    `given` says where they came from (default: "N given")."""
    need = images_guaranteed(target, confidence)
    if mode == "guarantee" and n < need:
        raise ValueError(
            f"false_alarm_mode guarantee: at most {100 * target:g}% false alarms with {100 * confidence:g}% "
            f"confidence needs at least {need} good images to calibrate on, and {given or f'{n} given'}: "
            f"give {need - n} more (or false_alarm_mode expected, which meets the target only on average)"
        )


def leave_one_out(
    detector,
    images_rgb: list[np.ndarray],
    encoded: list,
    category: str,
    target_false_alarm: float = 0.01,
    source: str = "taught frames, leave one out",
    mode: str = "expected",
    confidence: float = CONFIDENCE,
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
    require_enough(len(images_rgb), target_false_alarm, mode, confidence, f"{source} gives {len(images_rgb)}")
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
    point = calibrate(scores, target_false_alarm, source, mode=mode, confidence=confidence)
    return point, detector.at(point)
