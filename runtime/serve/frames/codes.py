"""The part id read from a code printed on the part (a QR code or a 1-D barcode, by OpenCV's own
detectors), or found in a file name by part_id_pattern.

Read on the inspector's thread, only for frames it inspects (never for the
live frames it passes over), with one detector per camera. A code that cannot
be read, or whose text could not be an id (empty, too long, control
characters), gives no part id: the file name's or none, never a guess.

A pattern is the user's regular expression run on every file name: one that
backtracks without end ((a|aa)+$ on a long name) would stall capture for good,
so each search is bounded in time (the `regex` module's timeout), and a search
that runs out gives no part id and a warning, never a stalled camera.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import regex

from .triggers import MAX_ID

log = logging.getLogger("lineside.serve")

KINDS = ("off", "qr", "barcode")
SEARCH_S = 0.05  # longest search of part_id_pattern in one file name


def usable_id(text) -> str | None:
    """`text` as a part id, or None when it could not be one (empty, over MAX_ID, control characters)."""
    text = str(text).strip()
    return text if 0 < len(text) <= MAX_ID and text.isprintable() else None


class PartPattern:
    """part_id_pattern searched in file names, each search bounded in time; `find(name)` -> id or None."""

    def __init__(self, pattern: str):
        try:
            self.pattern = regex.compile(pattern)  # the re module's syntax (regex's version 0)
        except (regex.error, ValueError, TypeError) as e:
            raise ValueError(f"setting part_id_pattern: {pattern!r} is no regular expression: {e}") from e
        self.slow = 0  # names whose search ran out of time

    def find(self, name: str) -> str | None:
        """Its first group in `name`, else the whole match; None without a match or a usable id."""
        try:
            found = self.pattern.search(name, timeout=SEARCH_S)
        except TimeoutError:
            self.slow += 1
            if self.slow == 1 or self.slow % 1000 == 0:
                log.warning(
                    "part_id_pattern %r took over %g s on %r (%d names so far): no part id; simplify the pattern "
                    "(nested repeats such as (a|aa)+ backtrack without end)",
                    self.pattern.pattern,
                    SEARCH_S,
                    name[:80],
                    self.slow,
                )
            return None
        if found is None:
            return None
        return usable_id(found.group(1) if found.groups() else found.group(0))


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
            if usable_id(text):
                return usable_id(text)
        return None
