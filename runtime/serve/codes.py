"""The part id read from a code printed on the part: a QR code or a 1-D barcode, by OpenCV's own detectors.

Read on the inspector's thread, only for frames it inspects (never for the
live frames it passes over), with one detector per camera. A code that cannot
be read, or whose text could not be an id (empty, too long, control
characters), gives no part id: the file name's or none, never a guess.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .triggers import MAX_ID

log = logging.getLogger("lineside.serve")

KINDS = ("off", "qr", "barcode")


class CodeReader:
    """`read(image)` -> the text of the first code found in an HxWx3 uint8 BGR (or HxW) frame, or None."""

    def __init__(self, kind: str):
        if kind not in KINDS[1:]:
            raise ValueError(f"setting part_id_code: {kind!r} is not one of {', '.join(KINDS[1:])}")
        self.kind = kind
        self.detector = cv2.QRCodeDetector() if kind == "qr" else cv2.barcode.BarcodeDetector()

    def read(self, image: np.ndarray) -> str | None:
        try:
            found = self.detector.detectAndDecode(image)[0]
        except cv2.error as e:  # a frame of a kind the detector refuses (dtype, channels): no code read
            log.debug("%s code not read: %s", self.kind, e)
            return None
        texts = [found] if isinstance(found, str) else list(found or ())
        for text in texts:
            text = str(text).strip()
            if 0 < len(text) <= MAX_ID and text.isprintable():
                return text
        return None
