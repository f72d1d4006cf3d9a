"""Frame sources and the capture thread.

Live sources (cameras, streams) feed a latest-frame slot: the inspector always
gets the newest frame and the ones it could not keep up with are dropped and
counted. Files and folders are not live: capture waits for the inspector, so
every frame of a recording is inspected. A live source that fails is reopened
with exponential backoff while /readyz says not ready.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..images import IMAGE_SUFFIXES

log = logging.getLogger("lineside.serve")


@dataclass
class Frame:
    frame_id: int
    time: float  # unix seconds at capture
    image: np.ndarray | None  # HxWx3 BGR as OpenCV reads it; None when the frame could not be decoded
    source: str
    note: str = ""  # why image is None


class FrameSource:
    """open() / read() -> (ok, image) / close(). `live` says whether frames wait for us."""

    live = True

    def __init__(self, spec: str):
        self.spec = spec

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[bool, np.ndarray | None, str]:
        """(source still delivering, image or None, note). False means: reopen (or finished)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class CaptureSource(FrameSource):
    """cv2.VideoCapture over a device index, /dev/videoN, a video file or a stream URL."""

    def __init__(self, spec: str, target, live: bool):
        super().__init__(spec)
        self.target, self.live, self.cap = target, live, None

    def open(self) -> None:
        self.cap = cv2.VideoCapture(self.target)
        if not self.cap.isOpened():
            self.cap.release()
            self.cap = None
            raise ConnectionError(f"cannot open source {self.spec!r}")

    def read(self):
        ok, image = self.cap.read() if self.cap is not None else (False, None)
        return ok, image if ok else None, "" if ok else "end of stream or read failure"

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class FolderSource(FrameSource):
    """Image files of a folder in name order; unreadable files become frames without an image."""

    live = False

    def __init__(self, spec: str, folder: Path):
        super().__init__(spec)
        self.folder, self.files, self.index = folder, [], 0

    def open(self) -> None:
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ConnectionError(f"folder {self.folder} holds no images")
        self.index = 0

    def read(self):
        if self.index >= len(self.files):
            return False, None, "end of folder"
        path = self.files[self.index]
        self.index += 1
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return True, image, "" if image is not None else f"unreadable image {path.name}"


def open_source(spec: str) -> FrameSource:
    """The right source for a --source value; a missing file or folder is refused at once."""
    if re.fullmatch(r"\d+", spec):
        return CaptureSource(spec, int(spec), live=True)
    if re.match(r"^(rtsp|rtsps|http|https)://", spec) or spec.startswith("/dev/video"):
        return CaptureSource(spec, spec, live=True)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(spec, path)
    if path.is_file():
        return CaptureSource(spec, str(path), live=False)
    raise FileNotFoundError(f"--source {spec!r} is neither a camera index, a URL, a file nor a folder")


class LatestFrameSlot:
    """One frame deep. A live put replaces an unread frame (counted as dropped); a
    waiting put blocks until the reader took the previous one."""

    def __init__(self):
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame, wait: bool, stop: threading.Event) -> bool:
        """Store `frame`; True when it replaced a frame nobody read (a dropped frame)."""
        with self._cond:
            while wait and self._frame is not None and not stop.is_set():
                self._cond.wait(0.1)
            dropped = self._frame is not None
            self.dropped += dropped
            self._frame = frame
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame


class Capture(threading.Thread):
    """Reads the source into the slot; reconnects live sources with backoff."""

    def __init__(self, source: FrameSource, slot: LatestFrameSlot, stop: threading.Event, metrics,
                 max_fps: float = 0.0, loop: bool = False, backoff_max: float = 30.0):  # fmt: skip
        super().__init__(name="capture", daemon=True)
        self.source, self.slot, self.stop, self.metrics = source, slot, stop, metrics
        self.max_fps, self.loop, self.backoff_max = max_fps, loop, backoff_max
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.frames = 0
        self.problem = "not started"

    def run(self) -> None:
        delay = 0.5
        try:
            while not self.stop.is_set():
                try:
                    self.source.open()
                except (ConnectionError, OSError) as e:
                    self._wait_retry(str(e), delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                self.connected.set()
                self.problem = ""
                before = self.frames
                self._pump()
                self.connected.clear()
                self.source.close()
                if not self.source.live and not self.loop:
                    break  # a recording has ended
                if self.source.live and not self.stop.is_set():
                    self.metrics.reconnects.inc()  # the stream was lost: reopen it
                    if self.frames == before:  # opened but delivered nothing: back off too
                        self.stop.wait(delay)
                        delay = min(delay * 2, self.backoff_max)
                    else:
                        delay = 0.5
        finally:
            self.finished.set()

    def _wait_retry(self, why: str, delay: float) -> None:
        self.problem = f"{why}; retrying in {delay:.1f}s"
        log.warning("source %s: %s", self.source.spec, self.problem)
        self.metrics.reconnects.inc()
        self.stop.wait(delay)

    def _pump(self) -> None:
        period = 1.0 / self.max_fps if self.max_fps > 0 else 0.0
        next_at = time.monotonic()
        while not self.stop.is_set():
            ok, image, note = self.source.read()
            if not ok:
                if self.source.live:
                    self.problem = f"source {self.source.spec!r} stopped delivering ({note})"
                    log.warning(self.problem)
                return
            self.frames += 1
            self.metrics.captured.inc()
            frame = Frame(self.frames, time.time(), image, self.source.spec, note)
            if self.slot.put(frame, wait=not self.source.live, stop=self.stop):
                self.metrics.dropped.inc()
            if period:
                next_at += period
                self.stop.wait(max(0.0, next_at - time.monotonic()))
