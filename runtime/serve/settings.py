"""Every setting of `python -m runtime.serve`: defaults, help, flags and config file in one place.

Every bound is checked here, at start, with one line naming the setting: a
queue of size 0 or -1 would be unbounded, a backoff of 0 a busy loop, and a
NaN compares false with every limit and so slips past all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from ..options import setting
from ..detect.frames import MAX_IMAGE_PIXELS
from ..bundle.manifest import PRECISIONS

AT_LEAST_ONE = ("sink_queue", "mqtt_queue", "explain_queue", "recent", "max_image_pixels", "http_max_connections")
ABOVE_ZERO = ("reconnect_max_s", "explain_seconds", "save_ng_mb", "http_read_timeout_s")
MQTT_QUEUE_MAX = 60_000  # below the 65,535 message ids one MQTT client can have outstanding


@dataclass(frozen=True)
class ServeSettings:
    source: str = setting("0", "camera index, /dev/videoN, video file, image folder, rtsp:// or http(s):// URL")
    bundle: Path = setting(Path("bundles/default"), "bundle folder")
    category: str = setting("part", "what the parts are, e.g. solar_cell or metal_nut")
    references: Path | None = setting(None, "folder of known-good images (few-shot branch)")
    teach: int = setting(0, "take the first N frames as known-good references")
    providers: tuple[str, ...] = setting(("cpu",), "onnxruntime providers in order: tensorrt,cuda,cpu")
    precision: str = setting("fp32", "graph precision", choices=PRECISIONS)
    threshold: float | None = setting(None, "NG threshold on the image score (default: the detector's)")
    max_fps: float = setting(0.0, "read at most this many frames per second (0: as fast as they come)")
    loop: bool = setting(False, "restart a video file or folder at its end")
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, "image files declaring more pixels are refused (ERROR) "
                                    "before decoding")  # fmt: skip
    host: str = setting("127.0.0.1", "HTTP address (127.0.0.1: this box only)")
    port: int = setting(8080, "HTTP port (0: any free port)")
    http_max_connections: int = setting(64, "open HTTP connections at most; more are answered 503 and closed")
    http_read_timeout_s: float = setting(10.0, "an HTTP connection that sends no complete request for this long "
                                         "is closed")  # fmt: skip
    show: bool = setting(False, "show the overlay in a window (needs a display and opencv-python)")
    results: Path = setting(Path("lineside-results.jsonl"), "durable log: one JSON line per inspected frame")
    save_ng: Path | None = setting(None, "folder for NG images with JSON sidecars")
    save_ng_mb: float = setting(500.0, "disk cap of the NG images serve wrote in --save-ng; its oldest go first "
                                "(other files there are never touched)")  # fmt: skip
    sink: tuple[str, ...] = setting((), "extra result sink: jsonl:PATH, mqtt://HOST:PORT/TOPIC, http(s)://URL")
    sink_queue: int = setting(256, "records a sink may fall behind before its records are dropped (counted)")
    mqtt_queue: int = setting(1000, "MQTT records held for a broker that is away (QoS 1); more are dropped "
                              "(counted)")  # fmt: skip
    webhook_follow_redirects: bool = setting(False, "re-send a webhook POST (same body) to where a 3xx points; "
                                             "off: a redirect is a failed delivery")  # fmt: skip
    explain: bool = setting(True, "explain NG frames in the background with the prompt agent")
    explain_queue: int = setting(4, "NG frames waiting for an explanation before new ones are skipped")
    explain_seconds: float = setting(10.0, "time bound of one explanation")
    reconnect_max_s: float = setting(30.0, "longest wait between reconnection attempts of a live source")
    recent: int = setting(500, "results kept in memory for /api/results")

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"setting {f.name}: {value} is not a finite number")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name}: {getattr(self, name)} must be >= 1")
        for name in ABOVE_ZERO:
            if not getattr(self, name) > 0:
                raise ValueError(f"setting {name}: {getattr(self, name)} must be > 0")
        self._check_ranges()

    def _check_ranges(self) -> None:
        if not str(self.category).strip():
            raise ValueError(f"setting category: {self.category!r} is empty; name the parts, e.g. metal_nut")
        if not str(self.source).strip():
            raise ValueError("setting source: empty; give a camera index, file, folder or URL")
        if self.teach < 0:
            raise ValueError(f"setting teach: {self.teach} must be >= 0")
        if self.max_fps < 0:
            raise ValueError(f"setting max_fps: {self.max_fps} must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"setting port: {self.port} is not a TCP port")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"setting threshold: {self.threshold} is outside 0..1")
        if self.mqtt_queue > MQTT_QUEUE_MAX:
            raise ValueError(f"setting mqtt_queue: {self.mqtt_queue} is above {MQTT_QUEUE_MAX}")
