"""What the web page and /api read: the latest result, recent ones, the last NGs, the live view.

The inspector hands over references only; the overlay JPEG is drawn by whoever
watches (a /stream client, the --show window), at most once per frame and set of
layers, never on the inspection thread. NG frames are also kept, small, for the
gallery, by its own thread (gallery.py).
"""

from __future__ import annotations

import collections
import threading
import time

import cv2
import numpy as np

from ...detect.overlay import render
from ...detect.result import Result
from .gallery import Gallery, Layers, shown_rgb

HISTORY = 120  # verdicts in /api/status's history strip
ALL = Layers()  # heatmap, outlines and banner: what /stream and --show draw unless asked otherwise


class State:
    """What /api and the page show: latest result, recent results, last NG, the live view.

    The inspector only hands over references to the newest frame and result;
    the overlay JPEG is drawn by whoever watches (a /stream client, the --show
    window), at most once per frame, never on the inspection thread.
    """

    def __init__(self, recent: int, gallery: int = 12):
        self.lock = threading.Condition()
        self.latest: dict | None = None
        self.recent: collections.deque = collections.deque(maxlen=recent)
        self.last_ng: dict | None = None
        self.published = self.ng_published = 0.0  # monotonic times of the latest and the last NG: the newest of
        # several cameras' (/api without ?camera) is told by them, never by capture times from different clocks
        self.gallery = Gallery(gallery, self.lock)
        self.decisions: collections.OrderedDict = collections.OrderedDict()  # (run, frame_id) -> operator's word
        self.explained: collections.OrderedDict = collections.OrderedDict()  # frame_id -> final explanation
        self._view: tuple[int, np.ndarray | None, Result | None] = (0, None, None)
        self._jpegs: dict[Layers, tuple[int, bytes | None]] = {}
        self.fps = 0.0
        self.started = time.time()
        self.operating_point: dict | None = None  # the threshold in force and how it was set (/api/status)

    def publish(self, record: dict, image: np.ndarray | None, result: Result) -> None:
        if record["label"] == "NG" and image is not None:
            self.gallery.offer(record, image, result)  # made small on the gallery's thread
        with self.lock:
            self.latest, self.published = record, time.monotonic()
            self.recent.append(record)
            if record["label"] == "NG":
                self.last_ng, self.ng_published = dict(record), self.published
            if image is None:  # nothing to see: a blank of the last frame's size, under the ERROR's verdict
                image = blank(self._view[1])
            self._view = (self._view[0] + 1, image, result)
            self.lock.notify_all()

    def explain(self, frame_id: int, explanation: dict) -> None:
        """The explainer's final word on an NG frame replaces the rule explanation it was published with;
        `explanation["origin"]` says which it is (rules, the model's name, skipped: then the rules stay)."""
        if explanation.get("origin") == "skipped":
            return  # nothing better came: the NG line's own rule explanation stays on the page
        with self.lock:  # copies, never the records handed to the sinks (they may not have sent them yet)
            # Kept apart too: the frame may have left the recent results (or not yet reached the gallery).
            self.explained[frame_id] = explanation
            while len(self.explained) > (self.recent.maxlen or 1) + (self.gallery.frames.maxlen or 1):
                self.explained.popitem(last=False)
            if self.last_ng and self.last_ng["frame_id"] == frame_id:
                self.last_ng = self.last_ng | {"explanation": explanation}
            for i, r in enumerate(self.recent):
                if r["frame_id"] == frame_id:
                    self.recent[i] = r | {"explanation": explanation}
                    if self.latest is r:
                        self.latest = self.recent[i]

    def since(self, frame_id: int) -> list[dict]:
        with self.lock:
            return [r for r in self.recent if r["frame_id"] > frame_id]

    def find(self, run: str, frame_id: int) -> dict | None:
        """The record of a frame still held (recent results or the NG gallery), or None."""
        with self.lock:
            kept = self.gallery.find(run, frame_id)
            if kept is not None:
                final = self.explained.get(frame_id)
                return kept.record | {"explanation": final} if final else kept.record
            return next((r for r in self.recent if r.get("run") == run and r["frame_id"] == frame_id), None)

    def gallery_frame(self, run: str, frame_id: int):
        """The kept NG frame (gallery.NgFrame), or None when it has left the gallery."""
        with self.lock:
            return self.gallery.find(run, frame_id)

    def decided(self, run: str, frame_id: int, decision: str) -> None:
        """An operator's word on a frame, shown beside it (bounded like the recent results)."""
        with self.lock:
            self.decisions[(run, frame_id)] = decision
            while len(self.decisions) > max(self.recent.maxlen or 1, len(self.gallery.frames)):
                self.decisions.popitem(last=False)

    def history(self, count: int = HISTORY) -> list[dict]:
        """The last `count` verdicts, small: enough for the history strip and the score plot."""
        with self.lock:
            rows = list(self.recent)[-count:]
            return [_brief(r, self.decisions.get((r.get("run"), r["frame_id"]))) for r in rows]

    def ng_frames(self) -> list[dict]:
        """The gallery, newest first, each record with its picture's address, its latest explanation (which
        `explain` keeps by frame id) and any decision on it."""
        with self.lock:
            out = []
            for r in self.gallery.listing():
                key = (r["run"], r["frame_id"])
                explanation = self.explained.get(r["frame_id"]) or r.get("explanation")
                out.append(r | {"explanation": explanation, "decision": self.decisions.get(key)})
            return out

    def next_jpeg(self, after: int, timeout: float, layers: Layers = ALL) -> tuple[int, bytes | None]:
        """(sequence number, overlay JPEG with `layers`) of a frame newer than `after`, or the same pair on timeout."""
        with self.lock:
            if self._view[0] <= after:
                self.lock.wait(timeout)
            seq, image, result = self._view
            drawn = self._jpegs.get(layers, (0, None))
            if drawn[0] == seq:
                return drawn
        jpeg = overlay_jpeg(image, result, self.fps, layers) if image is not None and seq > after else None
        with self.lock:
            if jpeg is not None and seq > self._jpegs.get(layers, (0, None))[0]:
                self._jpegs[layers] = (seq, jpeg)
            return seq, jpeg


def _brief(record: dict, decision: str | None) -> dict:
    settings = record.get("settings") or {}
    brief = {k: record.get(k) for k in ("run", "frame_id", "time", "label", "image_score", "file", "part_id")}
    return brief | {"threshold": settings.get("threshold"), "decision": decision}


def blank(like: np.ndarray | None) -> np.ndarray:
    """A dark frame the size of `like` (640 x 480 without one), for a frame that could not be decoded."""
    height, width = like.shape[:2] if like is not None else (480, 640)
    canvas = np.full((height, width, 3), 40, np.uint8)
    size = max(0.5, min(height, width) / 500)
    origin = (max(4, width // 12), height // 2)
    cv2.putText(
        canvas, "no picture: not decoded", origin, cv2.FONT_HERSHEY_SIMPLEX, size, (200, 200, 200), 1, cv2.LINE_AA
    )
    return canvas


def overlay_jpeg(image: np.ndarray, result: Result, fps: float, layers: Layers = ALL) -> bytes | None:
    """BGR frame + Result -> JPEG of the overlay (with the current rate when the banner is drawn), frame-sized."""
    rgb = shown_rgb(image, result)
    if rgb is None:
        return None
    canvas = render(rgb, result, heatmap=layers.heatmap, outlines=layers.outlines, banner=layers.banner)
    if not layers.banner:
        ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return data.tobytes() if ok else None
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
