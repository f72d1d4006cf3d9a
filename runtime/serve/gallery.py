"""The last NG frames, kept for the operator's page: each as a JPEG and a slim result, in bounded memory.

A frame as the camera saw it can be megabytes and its anomaly map four bytes a
pixel; a gallery of them would grow with the camera. So each NG frame is kept as
one JPEG (the plain frame, no overlay, so that the page can switch layers) and a
copy of its Result without masks and with its map shrunk to at most MAP_SIDE
pixels a side, 8 bits deep. The overlay is drawn again when someone looks.
"""

from __future__ import annotations

import collections
import dataclasses

import cv2
import numpy as np

from ..detect.overlay import render
from ..detect.result import Result

MAP_SIDE = 256  # the longest side of a kept anomaly map, in pixels
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
    record: dict  # the NG line as logged (the same dict the recent results hold, so explanations reach it)
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


def keep(record: dict, image_bgr: np.ndarray, result: Result) -> NgFrame | None:
    """An NG frame made small enough to keep; None when the image cannot be encoded (it then has no picture)."""
    if image_bgr is None or image_bgr.ndim not in (2, 3) or image_bgr.dtype != np.uint8:
        return None
    ok, data = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        return None
    small = None
    if result.anomaly_map is not None:
        values = np.clip(np.nan_to_num(result.anomaly_map.astype(np.float32)), 0, 1)
        h, w = values.shape[:2]
        factor = min(1.0, MAP_SIDE / max(h, w))
        if factor < 1.0:
            values = cv2.resize(values, (max(1, round(w * factor)), max(1, round(h * factor))), cv2.INTER_AREA)
        small = (values * 255).astype(np.uint8).astype(np.float32) / 255  # 8 bits of it, as float for render
    regions = [dataclasses.replace(r, mask=np.zeros((0, 0), bool)) for r in result.regions]
    return NgFrame(record, data.tobytes(), dataclasses.replace(result, anomaly_map=small, regions=regions))


class Gallery:
    """The last `size` NG frames, oldest dropped first; callers hold the State's lock."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"setting ng_gallery: {size} must be >= 1")
        self.frames: collections.deque[NgFrame] = collections.deque(maxlen=size)

    def resize(self, size: int) -> None:
        """Keep at most `size` (the ng_gallery setting), the newest."""
        if size < 1:
            raise ValueError(f"setting ng_gallery: {size} must be >= 1")
        self.frames = collections.deque(self.frames, maxlen=size)

    def add(self, frame: NgFrame) -> None:
        self.frames.append(frame)

    def find(self, run: str, frame_id: int) -> NgFrame | None:
        return next((f for f in self.frames if f.key == (run, frame_id)), None)

    def listing(self) -> list[dict]:
        """Newest first: each NG record with where its picture is."""
        return [
            f.record | {"image": f"/api/ng/{f.record['run']}/{f.record['frame_id']}.jpg"} for f in reversed(self.frames)
        ]
