"""How serve logs: text or one JSON object per line, and repeated warnings once per interval.

`setup("json")` makes every record one JSON object on one line (time, level,
logger, message, the record's extra fields, and the traceback when there is
one), for log shippers that would otherwise have to parse free text.

A failing peer must not fill the disk with log: a hostile client or a dead peer can make the same message appear thousands of
times a second (the issue measured 22 MB of log in 10 s). The first of a kind is
written at once; identical ones within `interval` seconds are counted, and the
next one written after the interval says how many were held back.

The libraries' own messages make one log with ours: those of Python's logging (the
PLC libraries asyncua and pymodbus among them) go through the same handler, its
format and its rate limit. OpenCV and FFmpeg write from C++ straight to the
process's stderr, in their own format, once per failed attempt (`[ WARN:0@...]
cap_v4l.cpp ... can't open camera by index`, 250 lines for a camera missing two
hours); what they say about a source lineside reports itself, once (capture.py's
Outage), so they are silenced unless OPENCV_LOG_LEVEL or OPENCV_FFMPEG_LOGLEVEL
asks for them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone

# The loggers a serve process writes to: ours, and the event loop and HTTP server under attack.
LOGGERS = ("lineside.serve", "asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.access")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# What every LogRecord has: anything else on a record came from `extra=` and is written as its own field.
STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class RateLimit(logging.Filter):
    """Lets one record per (logger, level, message, arguments) through per `interval` seconds."""

    def __init__(self, interval: float = 10.0, max_keys: int = 1000):
        super().__init__("lineside-rate-limit")
        self.interval, self.max_keys = interval, max_keys
        self.seen: dict[tuple, list] = {}  # key -> [time last written, suppressed since]
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg), repr(record.args))
        now = time.monotonic()
        with self.lock:
            entry = self.seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            suppressed = entry[1] if entry else 0
            if len(self.seen) >= self.max_keys:
                self.seen.clear()  # a flood of distinct messages: forget, never grow
            self.seen[key] = [now, 0]
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} identical messages suppressed)"
        return True


def install(interval: float = 10.0) -> None:
    """Put one RateLimit on each of LOGGERS (once per process: calling again changes nothing), and silence
    OpenCV's and FFmpeg's own lines."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimit) for f in logger.filters):
            logger.addFilter(RateLimit(interval))
    quiet_native()


def quiet_native() -> None:
    """OpenCV's and FFmpeg's messages silenced, unless the environment names their levels (then theirs rule).

    FFmpeg's level is read by OpenCV when its FFmpeg backend first opens a stream, so the variable is set
    before any source is opened; OpenCV's own is set at once as well."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    os.environ["OPENCV_LOG_LEVEL"] = "SILENT"
    import cv2

    levels = getattr(cv2.utils, "logging", None)  # OpenCV 4.8 (JetPack 6's) has only cv2.setLogLevel
    if levels is not None:
        levels.setLogLevel(levels.LOG_LEVEL_SILENT)
    else:
        cv2.setLogLevel(0)  # 0: LOG_LEVEL_SILENT


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when the record comes (test runners and daemons replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per record, never more than one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    """The root logger writes to stderr as `fmt` ("text" or "json"); calling again switches the format.

    Like logging.basicConfig, it leaves a root logger that someone else gave handlers
    alone (a program that embeds serve, a test runner): theirs is the say.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"setting log_format: {fmt!r} is not text or json")
    install()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Stderr)), None)
    if handler is None:
        if root.handlers:
            return
        handler = _Stderr()
        handler.addFilter(RateLimit())  # every library's records, whatever logger they come from
        root.addHandler(handler)
        root.setLevel(level)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
