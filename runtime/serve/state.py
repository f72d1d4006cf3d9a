"""What the web page and /api read: the latest result, recent ones, the last NG, the live view.

The inspector hands over references only; the overlay JPEG is drawn by whoever
watches (a /stream client, the --show window), at most once per frame, never on
the inspection thread.
"""

from __future__ import annotations

import collections
import threading

import cv2
import numpy as np

from ..detect.frames import to_rgb_uint8
from ..detect.overlay import render
from ..detect.result import Result


class State:
    """What /api and the page show: latest result, recent results, last NG, the live view.

    The inspector only hands over references to the newest frame and result;
    the overlay JPEG is drawn by whoever watches (a /stream client, the --show
    window), at most once per frame, never on the inspection thread.
    """

    def __init__(self, recent: int):
        self.lock = threading.Condition()
        self.latest: dict | None = None
        self.recent: collections.deque = collections.deque(maxlen=recent)
        self.last_ng: dict | None = None
        self._view: tuple[int, np.ndarray | None, Result | None] = (0, None, None)
        self._jpeg: tuple[int, bytes | None] = (0, None)
        self.fps = 0.0
        self.operating_point: dict | None = None  # the threshold in force and how it was set (/api/status)

    def publish(self, record: dict, image: np.ndarray | None, result: Result) -> None:
        with self.lock:
            self.latest = record
            self.recent.append(record)
            if record["label"] == "NG":
                self.last_ng = dict(record)
            self._view = (self._view[0] + 1, image, result)
            self.lock.notify_all()

    def explain(self, frame_id: int, text: str) -> None:
        with self.lock:
            if self.last_ng and self.last_ng["frame_id"] == frame_id:
                self.last_ng["explanation"] = text
            for r in self.recent:
                if r["frame_id"] == frame_id:
                    r["explanation"] = text

    def since(self, frame_id: int) -> list[dict]:
        with self.lock:
            return [r for r in self.recent if r["frame_id"] > frame_id]

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """(sequence number, overlay JPEG) of a frame newer than `after`, or the same pair on timeout."""
        with self.lock:
            if self._view[0] <= after:
                self.lock.wait(timeout)
            seq, image, result = self._view
            if self._jpeg[0] == seq:
                return self._jpeg
        jpeg = overlay_jpeg(image, result, self.fps) if image is not None and seq > after else None
        with self.lock:
            if jpeg is not None and seq > self._jpeg[0]:
                self._jpeg = (seq, jpeg)
            return seq, jpeg


def overlay_jpeg(image: np.ndarray, result: Result, fps: float) -> bytes | None:
    """BGR frame + Result -> JPEG of the overlay with the current rate."""
    try:
        rgb = to_rgb_uint8(image, "BGR")
    except ValueError:
        return None
    canvas = render(rgb, result)
    cv2.putText(
        canvas,
        f"{fps:.1f} fps",
        (8, canvas.shape[0] - 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return data.tobytes() if ok else None
