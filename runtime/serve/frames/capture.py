"""The capture thread and the one-frame slot between it and the inspector.

Live sources feed the slot as a latest-frame buffer: the inspector always gets
the newest frame and the ones it could not keep up with are dropped and
counted. Recordings (files, folders) wait for the inspector instead, also while
serve shuts down, so every frame captured from them is inspected. A live source
that fails is reopened with exponential backoff while /readyz says not ready;
so is one that is connected but blind: a GigE camera whose frames all arrive
incomplete (packets lost) delivers nothing to inspect, and after BLIND_AFTER_S
of that /readyz names it (its skipped frames are counted as dropped);
an error nobody foresaw stops serve (non-zero exit, /healthz failing) instead of
leaving a process that looks alive and inspects nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .codes import PartPattern
from .sources import Frame, FrameSource

log = logging.getLogger("lineside.serve")

BLIND_AFTER_S = 5.0  # only incomplete frames this long: not ready (a free-running camera sends 100+ meanwhile)


class LatestFrameSlot:
    """One frame deep. A live put replaces an unread frame (counted as dropped); a
    waiting put blocks until the reader took the previous one, and never replaces
    it, not even when stop is set (the inspector drains the slot at shutdown)."""

    def __init__(self):
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._abandoned = False
        self.dropped = 0

    def put(self, frame: Frame, wait: bool, stop: threading.Event | None = None) -> bool:
        """Store `frame`; True when a frame was lost (an unread one replaced, or no reader is left)."""
        with self._cond:
            while wait and self._frame is not None and not self._abandoned:
                self._cond.wait(0.1)
            if self._abandoned:
                self.dropped += 1
                return True
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

    def abandon(self) -> None:
        """The reader is gone: waiting puts return at once instead of blocking for ever."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()


class Outage:
    """What the log says about a live source that is away: one line when it goes (at start: that it cannot be
    opened), one for each new reason, reminders at growing intervals (1 min, 2, 4, ... at most hourly) and one
    when frames come again. Retries are counted in lineside_source_reconnects, not logged one by one: a camera
    missing for two hours leaves a handful of lines, not one per attempt."""

    FIRST_REMINDER_S, MAX_REMINDER_S = 60.0, 3600.0

    def __init__(self, spec: str, start_note: str = ""):
        self.spec, self.start_note = spec, start_note  # what serve does about a source it never had
        self.began: float | None = None  # monotonic time the outage began; None while frames come
        self.reasons: set[str] = set()
        self.attempts, self.remind_at, self.ever_delivered = 0, 0.0, False

    def failed(self, why: str) -> None:
        """One more failed attempt (or a source that stopped delivering), for `why`."""
        now = time.monotonic()
        self.attempts += 1
        if self.began is None:
            self.began, self.reasons, self.attempts = now, {why}, 1
            self.remind_at = now + self.FIRST_REMINDER_S
            if not self.ever_delivered:
                log.warning("source %r cannot be opened at start: %s; %s", self.spec, why, self.start_note)
            else:
                log.warning("source %r lost: %s; reopening it", self.spec, why)
        elif why not in self.reasons:
            self.reasons.add(why)
            log.warning("source %r still away, now: %s", self.spec, why)
        elif now >= self.remind_at:
            away = now - self.began
            self.remind_at = now + min(self.MAX_REMINDER_S, max(self.FIRST_REMINDER_S, away))
            log.warning("source %r away for %.0f s (%d attempts): %s", self.spec, away, self.attempts, why)

    def delivered(self) -> None:
        """A frame came: the outage, if any, is over."""
        if self.began is not None:
            log.info(
                "source %r delivers again after %.0f s away (%d attempts)",
                self.spec,
                time.monotonic() - self.began,
                self.attempts,
            )
        self.began, self.ever_delivered = None, True


class Capture(threading.Thread):
    """Reads the source into the slot; reconnects live sources with backoff.

    `tried` is set once the first opening was tried (`problem` says why it failed); `lost_at` is when the
    source was last lost (monotonic, None while connected) and `frame_at` when its last frame came: serve's
    health reads them."""

    def __init__(
        self,
        source: FrameSource,
        slot: LatestFrameSlot,
        stop: threading.Event,
        metrics,
        max_fps: float = 0.0,
        loop: bool = False,
        backoff_max: float = 30.0,
        camera: str = "",
        part_pattern: str = "",
        wait_for_source: bool = True,
    ):
        super().__init__(name=f"capture-{camera}" if camera else "capture", daemon=True)
        if not backoff_max > 0:
            raise ValueError(f"setting reconnect_max_s: {backoff_max} must be > 0")
        self.source, self.slot, self.stop, self.metrics = source, slot, stop, metrics
        self.max_fps, self.loop, self.backoff_max = max_fps, loop, backoff_max
        self.camera, self.part_pattern = camera, PartPattern(part_pattern) if part_pattern else None
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.frames = 0
        self.problem = "not started"
        self.failure: str | None = None  # set when capture died of an error nobody foresaw
        self.tried = threading.Event()
        self.lost_at: float | None = time.monotonic()
        self.frame_at: float | None = None
        self.blind_after_s = BLIND_AFTER_S
        self._incomplete_seen = source.incomplete
        # the run of incomplete frames since the last complete one: when it began and last grew (monotonic), its length
        self.incomplete_since: float | None = None
        self.incomplete_last, self.incomplete_run, self._blind_said = 0.0, 0, False
        self.outage = Outage(
            source.spec,
            "waiting for it (not ready, and /healthz unhealthy after health_stall_s); check the camera index, "
            "device or URL, or set wait_for_source off to refuse to start"
            if wait_for_source
            else "refusing to start (wait_for_source is off)",
        )

    def run(self) -> None:
        try:
            self._run()
        except (ConnectionError, OSError) as e:  # a recording gone since start
            self.failure = f"capture of {self.source.spec!r} failed: {e}"
            log.error(self.failure)
            self.stop.set()
        except Exception as e:  # a dead capture thread must stop serve, not leave it idle and "healthy"
            self.failure = f"capture of {self.source.spec!r} failed: {type(e).__name__}: {e}"
            log.exception(self.failure)
            self.stop.set()
        finally:
            self.connected.clear()
            self.lost_at = self.lost_at or time.monotonic()
            self.tried.set()
            self.finished.set()

    def _run(self) -> None:
        delay = min(0.5, self.backoff_max)
        while not self.stop.is_set():
            try:
                self.source.open()
            except (ConnectionError, OSError) as e:
                if not self.source.live and not self.loop:
                    raise  # a recording that was there at start and is gone now: nothing to wait for
                self._wait_retry(str(e), delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self.connected.set()
            self.lost_at, self.problem = None, ""
            self.tried.set()
            before = self.frames
            note = self._pump()
            if self.source.live and not self.stop.is_set():
                why = "opened, then no frame" if self.frames == before else "stopped delivering"
                self.problem = f"source {self.source.spec!r} {why} ({note})"  # said before readiness drops
                self.outage.failed(f"{why} ({note})")
            if self.source.live or not self.loop or self.stop.is_set():
                # a looping recording between two passes stays connected: it is lost only when reopening fails
                self.connected.clear()
                self.lost_at = time.monotonic()
            self.source.close()
            if not self.source.live and not self.loop:
                break  # a recording has ended
            if self.stop.is_set():
                break
            if self.frames == before:  # opened but delivered nothing: back off too
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
            else:
                delay = min(0.5, self.backoff_max)
            if self.source.live:
                self.metrics.reconnects.inc()  # the stream was lost: reopen it

    def _wait_retry(self, why: str, delay: float) -> None:
        self.problem = f"{why}; retrying in {delay:.1f}s"
        if self.connected.is_set():  # a looping recording gone between passes: lost now, its problem said first
            self.connected.clear()
            self.lost_at = time.monotonic()
        self.outage.failed(why)
        self.tried.set()
        self.metrics.reconnects.inc()
        self.stop.wait(delay)

    def _pump(self) -> str:
        """Frames into the slot until the source stops delivering (its note returned) or serve stops."""
        period = 1.0 / self.max_fps if self.max_fps > 0 else 0.0
        next_at = time.monotonic()
        while not self.stop.is_set():
            ok, image, note = self.source.read()
            self._count_incomplete(image, note)
            if not ok:
                return note
            if image is None and not note:
                continue  # no frame yet (a triggered camera waiting for its trigger)
            self.frame_at = time.monotonic()
            if self.source.live:
                self.outage.delivered()
            self.frames += 1
            self.metrics.captured.inc()
            taken = self.source.last_time or time.time()  # the source's own capture time when it has one
            file, index = self.source.last_file, self.source.last_index
            part = self.part_of(file or ("" if self.source.live else Path(self.source.spec).name))
            frame = Frame(
                self.frames,
                taken,
                image,
                self.source.spec,
                note,
                file,
                index=index,
                part_id=part,
                part_from="file name" if part else "",
                camera=self.camera,
            )
            if self.slot.put(frame, wait=self.source.waits, stop=self.stop):
                self.metrics.dropped.inc()
            if period:
                next_at += period
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        return "serve stopping"

    def _count_incomplete(self, image, note: str) -> None:
        """The frames the source received broken since the last read: dropped when it skipped them (a free-running
        camera; a triggered one hands each over, to become an ERROR line), and a run that only a complete frame
        ends. The log says when the run makes the source blind and when it ends."""
        fresh = self.source.incomplete - self._incomplete_seen
        if fresh > 0:
            self._incomplete_seen += fresh
            self.metrics.incomplete.inc(fresh)
            if image is None and not note:
                self.metrics.dropped.inc(fresh)
            now = time.monotonic()
            if self.incomplete_since is None:
                self.incomplete_run, self.incomplete_last, self.incomplete_since = 0, now, now
            self.incomplete_run += fresh
            self.incomplete_last = now
            if not self._blind_said and (why := self.blind()):
                self._blind_said = True
                log.warning("source %r: %s; not ready until a complete frame comes", self.source.spec, why)
        elif image is not None and self.incomplete_since is not None:
            if self._blind_said:
                log.info(
                    "source %r: a complete frame again, after %d incomplete ones in %.0f s",
                    self.source.spec,
                    self.incomplete_run,
                    time.monotonic() - self.incomplete_since,
                )
            self.incomplete_since, self._blind_said = None, False

    def blind(self) -> str | None:
        """Why a connected source gives nothing to inspect: for longer than blind_after_s every frame it received
        was incomplete (None otherwise, and once a complete frame came)."""
        since, last = self.incomplete_since, self.incomplete_last
        if since is None or last - since <= self.blind_after_s:
            return None
        return (
            f"only incomplete frames from the camera for {time.monotonic() - since:.0f} s ({self.incomplete_run} "
            "frames, none complete): packets are lost on the way (network load or errors, MTU, the camera's packet "
            "size or frame rate)"
        )

    def part_of(self, name: str) -> str | None:
        """The part id part_id_pattern finds in a file name: its first group, or the whole match; None without."""
        return self.part_pattern.find(name) if self.part_pattern is not None and name else None
