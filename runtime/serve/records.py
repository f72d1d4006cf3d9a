"""Result records and the durable results log, in strict JSON only.

A record that cannot be written as strict JSON (a NaN or inf token, which JSON
readers reject) is never written as it is: the inspector swaps in an ERROR
record for that frame, so the line is not lost. A log that cannot be written
(disk full, device gone) is fatal: serve stops with a non-zero exit rather than
inspect frames whose verdicts go nowhere.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

from ..detect.lines import FrameRef, error_line, result_line, strict_json
from ..detect.result import Result

__all__ = ["ResultsLog", "bare_error", "frame_ref", "record_of", "strict_json"]

log = logging.getLogger("lineside.serve")


def frame_ref(frame, run: str) -> FrameRef:
    """The head of every line about a captured `Frame`: which frame, from where."""
    return FrameRef(
        run,
        frame.frame_id,
        frame.time,
        frame.source,
        frame.file,
        part_id=frame.part_id,
        trigger_id=frame.trigger_id,
        trigger_time=frame.trigger_time,
        camera=frame.camera,
        frame_index=frame.index,
    )


def record_of(frame, result: Result, run: str) -> dict:
    """The durable line of one inspected frame: which frame, from where, and the result."""
    return result_line(frame_ref(frame, run), result)


def bare_error(frame, run: str, why: str, like: Result) -> dict:
    """An ERROR line without settings, for when even the detector's error record is not strict JSON."""
    return error_line(frame_ref(frame, run), why, like)


class ResultsLog:
    """Append-only JSONL; each line flushed, fsync'd at most once a second.

    The first failed write is kept in `failure` and every later write refuses at
    once, so a broken log is reported, not half-written.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.synced = time.monotonic()
        self.failure: str | None = None

    def write(self, record: dict) -> None:
        """Strict JSON of `record` as one line (ValueError if it cannot be, before anything is written)."""
        self.write_line(strict_json(record))

    def write_line(self, line: str) -> None:
        with self.lock:
            if self.failure is not None:
                raise OSError(self.failure)
            try:
                self.file.write(line + "\n")
                self.file.flush()
                if time.monotonic() - self.synced > 1.0:
                    self._sync()
            except OSError as e:
                self.failure = f"results log {self.path} cannot be written: {e}"
                raise OSError(self.failure) from e

    def _sync(self) -> None:
        """fsync; a pipe or character device cannot sync (EINVAL), which is not a failure."""
        try:
            os.fsync(self.file.fileno())
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        self.synced = time.monotonic()

    def close(self) -> None:
        with self.lock:
            try:
                self.file.flush()
                self._sync()
            except OSError as e:
                if self.failure is None:  # (a failure already recorded has been reported)
                    self.failure = f"results log {self.path} cannot be written: {e}"
                    log.error("closing: %s", self.failure)
            finally:
                try:
                    self.file.close()
                except OSError:
                    pass  # the failure above is already recorded
