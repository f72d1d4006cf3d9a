"""serve's --teach N and its operating point.

`Teaching` collects the first N frames (each encoded as it arrives), then
checks them among themselves (detect/screening.py: empty, blurred, outliers),
keeps the rest as references and says, frame by frame, what became of each: the
TEACH lines. `Operating` sets the threshold serve runs at and records how: the
threshold setting, a folder of known-good images (--calibrate DIR) or the
taught frames scored each against the others (--calibrate-teach), for the
false-alarm target (detect/calibration.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...detect.calibration import (
    CONFIDENCE,
    OperatingPoint,
    calibrate_detector,
    fixed,
    leave_one_out,
    require_enough,
)
from ...detect.detector import Detector
from ...detect.references import ReferenceMemory, content_key
from ...detect.screening import screen

log = logging.getLogger("lineside.serve")


@dataclass
class Taught:
    """What teaching gave: the references (given and taught), their memory, and one line's worth per taught frame."""

    references: list[np.ndarray]  # RGB: --references DIR's, then the taught frames kept
    encoded: list  # ImageEncoder.encode of each of `references`
    memory: ReferenceMemory | None
    lines: list[tuple[object, int, str | None]] = field(default_factory=list)  # (frame, references held, why refused)


class Teaching:
    """The frames taught so far; `finish` screens them and makes the memory."""

    def __init__(self, detector: Detector, screen_frames: bool = True):
        self.detector, self.screen_frames = detector, screen_frames
        self.frames: list = []
        self.images: list[np.ndarray] = []
        self.encoded: list = []

    @property
    def pending(self) -> bool:
        return bool(self.frames)

    def take(self, frame, rgb: np.ndarray) -> None:
        """Keep `frame` (its HxWx3 uint8 RGB image `rgb`) for teaching; raises when the encoder fails on it."""
        encoded = self.detector.encoder.encode(rgb)
        self.frames.append(frame)
        self.images.append(rgb)
        self.encoded.append(encoded)

    def finish(self, given: list[np.ndarray] | None) -> Taught:
        """Screen the taught frames, add the kept ones to `given` (RGB references from --references DIR, or None)."""
        reasons = [None] * len(self.images)
        if self.screen_frames and self.images:
            reasons = screen(self.images, np.stack([g for g, _ in self.encoded]))
        given = list(given or [])
        references = given + [im for im, why in zip(self.images, reasons) if why is None]
        encoded = [self.detector.encoder.encode(r) for r in given]
        encoded += [e for e, why in zip(self.encoded, reasons) if why is None]
        lines, held = [], len(given)
        for frame, why in zip(self.frames, reasons):
            held += why is None
            lines.append((frame, held, why))
            if why:
                log.warning("taught frame %d refused as a reference: %s", frame.frame_id, why)
        memory = None
        if references:
            s, encoder = self.detector.settings, self.detector.encoder
            shape = (s.coreset_ratio, s.nn_index, s.reference_window, encoder.grid)
            memory = ReferenceMemory.from_encoded(content_key(references), encoder.identity, encoded, *shape)
            self.detector.remember_pixels(references, colour="RGB")  # what NG explanations are measured against
        self.frames, self.images, self.encoded = [], [], []
        return Taught(references, encoded, memory, lines)


class Operating:
    """How serve's threshold is set: the setting, `images` (RGB, from `folder`), or the taught frames."""

    def __init__(
        self,
        images: list[np.ndarray] | None = None,
        folder: Path | None = None,
        target: float = 0.01,
        from_teach: bool = False,
        teach: int = 0,
        mode: str = "expected",
        confidence: float = CONFIDENCE,
    ):
        if images is not None and from_teach:
            raise ValueError("settings calibrate and calibrate_teach: give one way of setting the threshold")
        if images is not None and not images:
            raise ValueError(f"setting calibrate: {folder} holds no image")
        if from_teach and teach < 2:
            raise ValueError("setting calibrate_teach needs teach >= 2 (each taught frame scored against the others)")
        if images is not None:  # refused at start, not after the line has run for a while
            require_enough(len(images), target, mode, confidence, f"calibrate {folder} holds {len(images)} images")
        elif from_teach:
            require_enough(teach, target, mode, confidence, f"teach is {teach}")
        self.images, self.folder, self.target, self.from_teach = images, folder, target, from_teach
        self.mode, self.confidence = mode, confidence

    def settle(
        self, detector: Detector, category: str, memory: ReferenceMemory | None, taught: Taught | None = None
    ) -> tuple[Detector, OperatingPoint]:
        """The detector with the threshold in force, and the OperatingPoint that says how it was set."""
        if self.from_teach and taught is not None:
            how = f"{len(taught.references)} taught frames, each against the others"
            point, detector = leave_one_out(
                detector, taught.references, taught.encoded, category, self.target, how, self.mode, self.confidence
            )
        elif self.images is not None:
            how = f"calibrate {self.folder}: {len(self.images)} good images"
            point, detector = calibrate_detector(
                detector, self.images, category, memory, "RGB", self.target, how, self.mode, self.confidence
            )
        else:
            point = fixed(detector.settings.threshold, "threshold setting")
        log.info("operating point: %s", point.describe())
        return detector, point
