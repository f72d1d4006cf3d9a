"""The last NG frames, kept for the operator's page: each as a JPEG and a slim result, in bounded memory.

A frame as the camera saw it can be megabytes and its anomaly map four bytes a
pixel; a gallery of them would grow with the camera. So each NG frame is kept as
one JPEG (the plain frame, no overlay, so that the page can switch layers) and a
copy of its Result without masks and with its map shrunk to at most MAP_SIDE
pixels a side, 8 bits deep. The overlay is drawn again when someone looks.

Making them small takes tens of milliseconds on a large frame, so it is done by
the gallery's own thread, never the inspector's: the inspector only queues the
frame (at most WAITING of them; beyond that an NG frame is not kept, and counted).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading

import cv2
import numpy as np

from ...detect.frames import ImageError, to_rgb_uint8
from ...detect.overlay import render
from ...detect.result import Result

log = logging.getLogger("lineside.serve")

MAP_SIDE = 256  # the longest side of a kept anomaly map, in pixels
WAITING = 4  # NG frames queued for keeping at most (each holds its full frame until kept)
JPEG_QUALITY = 92  # the kept frame may become a known-good reference (feedback.py): little loss


@dataclasses.dataclass(frozen=True)
class Layers:
    """What an overlay shows: the heatmap, the regions' outlines and captions, the verdict banner."""

    heatmap: bool = True
    outlines: bool = True
    banner: bool = True

    @classmethod
    def of(cls, query, banner_default: bool = True) -> Layers:
        """From query parameters such as ?heatmap=0&outlines=1 ("0", "false", "off", "no": off)."""

        def on(name: str, default: bool) -> bool:
            raw = query.get(name)
            return default if raw is None else raw.strip().lower() not in ("0", "false", "off", "no")

        return cls(on("heatmap", True), on("outlines", True), on("banner", banner_default))


@dataclasses.dataclass(frozen=True)
class NgFrame:
    record: dict  # the NG line as logged; its later explanation is kept apart (State.explained)
    jpeg: bytes  # the frame as the camera saw it, BGR encoded
    result: Result  # slim: no masks, a small 8-bit map

    @property
    def key(self) -> tuple[str, int]:
        return self.record["run"], self.record["frame_id"]

    def image_bgr(self) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)

    def overlay_jpeg(self, layers: Layers, width: int | None = None) -> bytes | None:
        """The overlay at the frame's own size, or shrunk to `width` pixels wide (thumbnails; never enlarged)."""
        canvas = render(cv2.cvtColor(self.image_bgr(), cv2.COLOR_BGR2RGB), self.result, **dataclasses.asdict(layers))
        if width is not None and width < canvas.shape[1]:
            height = max(1, round(canvas.shape[0] * width / canvas.shape[1]))
            canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return data.tobytes() if ok else None


def shown_rgb(image, result: Result) -> np.ndarray | None:
    """The frame as the detector saw it (HxWx3 uint8 RGB), for the page: grey, 16-bit, 10/12/14-bit and
    4-channel frames converted at the bit depth the result was made with; None when it cannot be."""
    bits = int((result.settings or {}).get("input_bits") or 16)
    try:
        return to_rgb_uint8(image, "BGR", bits, min_side=1)
    except ImageError:
        return None


def keep(record: dict, image_bgr: np.ndarray, result: Result) -> NgFrame | None:
    """An NG frame made small enough to keep; None when the image cannot be encoded (it then has no picture)."""
    rgb = shown_rgb(image_bgr, result) if image_bgr is not None else None
    if rgb is None:
        return None
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        return None
    small = None
    if result.anomaly_map is not None:
        values = result.anomaly_map.astype(np.float32, copy=False)
        h, w = values.shape[:2]
        factor = min(1.0, MAP_SIDE / max(h, w))
        if factor < 1.0:  # shrunk first: the rest works on a small map
            size = (max(1, round(w * factor)), max(1, round(h * factor)))
            values = cv2.resize(values, size, interpolation=cv2.INTER_AREA)
        values = np.clip(np.nan_to_num(values), 0, 1)
        small = np.round(values * 255).astype(np.uint8).astype(np.float32) / 255  # 8 bits of it, as float for render
    regions = [dataclasses.replace(r, mask=np.zeros((0, 0), bool)) for r in result.regions]
    return NgFrame(record, data.tobytes(), dataclasses.replace(result, anomaly_map=small, regions=regions))


class Gallery:
    """The last `size` NG frames, oldest dropped first. `lock` is the State's: callers of `find` and
    `listing` hold it; the keeper thread takes it to add a frame."""

    def __init__(self, size: int, lock=None):
        if size < 1:
            raise ValueError(f"setting ng_gallery: {size} must be >= 1")
        self.frames: collections.deque[NgFrame] = collections.deque(maxlen=size)
        self.lock = lock or threading.Lock()
        self.waiting: queue.Queue = queue.Queue(WAITING)
        self.skipped = 0  # NG frames not kept: the keeper was behind
        self._starting = threading.Lock()
        self._keeper: threading.Thread | None = None

    def offer(self, record: dict, image_bgr: np.ndarray, result: Result) -> None:
        """From the inspection thread: queued for keeping, never waited for."""
        with self._starting:
            try:
                self.waiting.put_nowait((record, image_bgr, result))
            except queue.Full:
                self.skipped += 1
                log.warning("NG frame %s not kept for the page: %d are waiting to be", record["frame_id"], WAITING)
                return
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="gallery", daemon=True)
                self._keeper.start()

    def _keep(self) -> None:
        """Makes queued frames small and adds them; ends after a few idle seconds (the next offer starts it)."""
        while True:
            try:
                record, image, result = self.waiting.get(timeout=5.0)
            except queue.Empty:
                with self._starting:
                    if self.waiting.empty():
                        self._keeper = None
                        return
                continue
            try:
                kept = keep(record, image, result)
            except Exception as e:  # a picture for the page is a courtesy: the verdict is logged
                log.warning("NG frame %s not kept for the page: %s", record.get("frame_id"), e)
                kept = None
            if kept is not None:
                with self.lock:
                    self.frames.append(kept)

    def resize(self, size: int) -> None:
        """Keep at most `size` (the ng_gallery setting), the newest."""
        if size < 1:
            raise ValueError(f"setting ng_gallery: {size} must be >= 1")
        with self.lock:
            self.frames = collections.deque(self.frames, maxlen=size)

    def find(self, run: str, frame_id: int) -> NgFrame | None:
        return next((f for f in self.frames if f.key == (run, frame_id)), None)

    def listing(self) -> list[dict]:
        """Newest first: each NG record with where its picture is."""
        return [
            f.record | {"image": f"/api/ng/{f.record['run']}/{f.record['frame_id']}.jpg"} for f in reversed(self.frames)
        ]
