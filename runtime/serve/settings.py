"""Every setting of `python -m runtime.serve`: defaults, help, flags and config file in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import setting
from ..manifest import PRECISIONS


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
    host: str = setting("127.0.0.1", "HTTP address (127.0.0.1: this box only)")
    port: int = setting(8080, "HTTP port (0: any free port)")
    show: bool = setting(False, "show the overlay in a window (needs a display and opencv-python)")
    results: Path = setting(Path("lineside-results.jsonl"), "durable log: one JSON line per inspected frame")
    save_ng: Path | None = setting(None, "folder for NG images with JSON sidecars")
    save_ng_mb: float = setting(500.0, "disk cap of --save-ng; the oldest files go first")
    sink: tuple[str, ...] = setting((), "extra result sink: jsonl:PATH, mqtt://HOST:PORT/TOPIC, http(s)://URL")
    sink_queue: int = setting(256, "records a sink may fall behind before its records are dropped (counted)")
    explain: bool = setting(True, "explain NG frames in the background with the prompt agent")
    explain_queue: int = setting(4, "NG frames waiting for an explanation before new ones are skipped")
    explain_seconds: float = setting(10.0, "time bound of one explanation")
    reconnect_max_s: float = setting(30.0, "longest wait between reconnection attempts of a live source")
    recent: int = setting(500, "results kept in memory for /api/results")

    def __post_init__(self):
        if self.teach < 0:
            raise ValueError(f"setting teach: {self.teach} must be >= 0")
        if self.max_fps < 0:
            raise ValueError(f"setting max_fps: {self.max_fps} must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"setting port: {self.port} is not a TCP port")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"setting threshold: {self.threshold} is outside 0..1")
