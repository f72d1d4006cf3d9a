"""Result records and the durable results log, in strict JSON only.

A record that cannot be written as strict JSON (a NaN or inf token, which JSON
readers reject) is never written as it is: the inspector swaps in an ERROR
record for that frame, so the line is not lost. A log that cannot be written
(disk full, device gone) is fatal: serve stops with a non-zero exit rather than
inspect frames whose verdicts go nowhere.

Such a stop can leave the log ending in half a line. Appending to it would glue
the next run's first result onto that half, making one line no reader can parse,
so a log is opened only after its unterminated tail is moved to a quarantine
file beside it (`results.jsonl.partial-<UTC time>`), with a warning.

Every line is a link of the log's hash chain (runtime/audit.py: seq, prev, hash),
added as it is written, under the log's lock, so the order in the file is the
order of the chain. The chain goes on across restarts from the last whole line
found at open (after the quarantine above), so `lineside audit verify` reads one
chain over the log's whole life.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

from ... import audit
from ...detect.lines import FrameRef, error_line, result_line, strict_json
from ...detect.result import Result
from .provenance import Provenance

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


def record_of(frame, result: Result, run: str, provenance: Provenance | None = None) -> dict:
    """The durable line of one inspected frame: which frame, from where, the result, and its `audit`
    block (provenance.py) when serve knows it."""
    record = result_line(frame_ref(frame, run), result)
    if provenance is not None:
        record["audit"] = provenance.block(frame.image, record)
    return record


def bare_error(frame, run: str, why: str, like: Result) -> dict:
    """An ERROR line without settings, for when even the detector's error record is not strict JSON."""
    return error_line(frame_ref(frame, run), why, like)


TAIL_CHUNK = 1 << 16  # bytes read at a time, backwards, looking for the last line's end


def _tail_start(file) -> int:
    """Where the unterminated last line of `file` (opened "rb", at its end) starts: just after the last newline."""
    end = file.tell()
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        file.seek(start)
        newline = file.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def end_partial_line(path: Path) -> Path | None:
    """Make the log at `path` end on a line's end before anything is appended; the quarantine file, if one.

    A last line that is a whole JSON object lacking only its newline is kept and
    ended; anything else unterminated is moved out (copied, synced, then cut
    from the log), so no byte of it is lost and none is read as a result. Only
    regular files: a pipe or device has no tail to mend. OSError, naming both
    files, when the tail cannot be moved (the disk may still be full): writing
    after it would break the log's first new line.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return None
    with open(path, "rb+") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return None
        start = _tail_start(file)
        file.seek(start)
        tail = file.read()
        if _whole_record(tail):
            try:
                file.seek(size)
                file.write(b"\n")
                file.flush()
                os.fsync(file.fileno())
            except OSError as e:
                raise OSError(f"results log {path} cannot be written: {e}") from e
            log.warning("results log %s: its last line lacked only its newline (ended now)", path)
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        quarantine = path.with_name(f"{path.name}.partial-{stamp}-{os.getpid()}")
        try:
            out = open(quarantine, "xb")
        except OSError as e:
            raise _unmovable(path, tail, quarantine, e) from e
        try:
            with out:
                out.write(tail)
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            quarantine.unlink(missing_ok=True)  # half a copy is no copy: the tail stays where it was
            raise _unmovable(path, tail, quarantine, e) from e
        try:
            file.truncate(start)
            file.flush()
            os.fsync(file.fileno())
        except OSError as e:
            raise OSError(f"results log {path}: cannot cut its partial last line (copied to {quarantine}): {e}") from e
    log.warning(
        "results log %s ended in a partial line (%d bytes, left by a stop mid-write: disk full, power cut): "
        "moved to %s; the log goes on from a fresh line",
        path,
        len(tail),
        quarantine,
    )
    return quarantine


def _unmovable(path: Path, tail: bytes, quarantine: Path, e: OSError) -> OSError:
    return OSError(
        f"results log {path} ends in a partial line ({len(tail)} bytes, left by a stop mid-write) that cannot "
        f"be moved to {quarantine}: {e}; free space there, or move that line out by hand"
    )


def _whole_record(tail: bytes) -> bool:
    try:
        return isinstance(json.loads(tail.decode("utf-8")), dict)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
        return False


class ResultsLog:
    """Append-only JSONL; each line flushed, fsync'd at most once a second.

    The first failed write is kept in `failure` and every later write refuses at
    once, so a broken log is reported, not half-written.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        end_partial_line(self.path)
        self.head = self._head()
        self.file = open(self.path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.synced = time.monotonic()
        self.failure: str | None = None

    def write(self, record: dict) -> dict:
        """Strict JSON of `record` as one line (ValueError if it cannot be, before anything is written);
        `record` gains the line's chain fields, so what the sinks are given is what the log holds."""
        record.update(self.write_line(strict_json(record)))
        return record

    def _head(self) -> audit.Head:
        """Where the chain stands: after the log's last line (a pipe or device starts a chain of its own)."""
        if not self.path.is_file():
            return audit.Head()
        head = audit.head_after(audit.last_line(self.path))
        if not head.chained:
            log.warning(
                "results log %s ends in a line without the audit chain (seq, prev, hash): the chain starts "
                "here at seq 1, linked to that line; lineside audit verify names the lines before it",
                self.path,
            )
        return head

    def write_line(self, line: str) -> dict:
        """`line` (one JSON object) chained and appended, flushed; its chain fields (seq, prev, hash)."""
        with self.lock:
            if self.failure is not None:
                raise OSError(self.failure)
            chained, digest = audit.link(line, self.head.seq, self.head.prev)
            try:
                self.file.write(chained + "\n")
                self.file.flush()
                chain = {"seq": self.head.seq, "prev": self.head.prev, "hash": digest}
                self.head = audit.Head(self.head.seq + 1, digest)
                if time.monotonic() - self.synced > 1.0:
                    self._sync()
            except OSError as e:
                self.failure = f"results log {self.path} cannot be written: {e}"
                raise OSError(self.failure) from e
        return chain

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
