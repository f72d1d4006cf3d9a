"""Repeated identical warnings, once per interval: a failing peer must not fill the disk with log.

A hostile client or a dead peer can make the same message appear thousands of
times a second (the issue measured 22 MB of log in 10 s). The first of a kind is
written at once; identical ones within `interval` seconds are counted, and the
next one written after the interval says how many were held back.
"""

from __future__ import annotations

import logging
import threading
import time

# The loggers a serve process writes to: ours, and the event loop and HTTP server under attack.
LOGGERS = ("lineside.serve", "asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.access")


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
    """Put one RateLimit on each of LOGGERS (once per process: calling again changes nothing)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimit) for f in logger.filters):
            logger.addFilter(RateLimit(interval))
