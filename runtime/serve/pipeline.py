"""The inspection worker, the explanation worker, and the state the web page reads.

Every frame the inspector takes gets exactly one line in the durable results log,
flushed before the result goes anywhere else; a frame that cannot be decoded or
whose inference fails is logged as ERROR, never as OK. Explanations come later,
from their own worker, as extra lines that name the frame they explain.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

import cv2
import numpy as np

from ..detect.detector import Detector
from ..detect.frames import to_rgb_uint8
from ..detect.lines import FrameRef, explanation_line, new_run, teach_line
from ..detect.overlay import render
from ..detect.result import Result
from .capture import LatestFrameSlot
from .records import ResultsLog, bare_error, frame_ref, record_of, strict_json
from .sources import Frame
from .teaching import Operating, Teaching

log = logging.getLogger("lineside.serve")


class State:
    """What /api and the page show: latest result, recent results, last NG, the live view.

    The inspector only hands over references to the newest frame and result;
    the overlay JPEG is drawn by whoever watches (a /stream client, the --show
    window), at most once per frame, never on the inspection thread.
    """

    def __init__(self, recent: int):
        self.lock = threading.Condition()
        self.latest: dict | None = None
        self.recent: collections.deque = collections.deque(maxlen=recent)
        self.last_ng: dict | None = None
        self._view: tuple[int, np.ndarray | None, Result | None] = (0, None, None)
        self._jpeg: tuple[int, bytes | None] = (0, None)
        self.fps = 0.0
        self.operating_point: dict | None = None  # the threshold in force and how it was set (/api/status)

    def publish(self, record: dict, image: np.ndarray | None, result: Result) -> None:
        with self.lock:
            self.latest = record
            self.recent.append(record)
            if record["label"] == "NG":
                self.last_ng = dict(record)
            self._view = (self._view[0] + 1, image, result)
            self.lock.notify_all()

    def explain(self, frame_id: int, text: str) -> None:
        with self.lock:
            if self.last_ng and self.last_ng["frame_id"] == frame_id:
                self.last_ng["explanation"] = text
            for r in self.recent:
                if r["frame_id"] == frame_id:
                    r["explanation"] = text

    def since(self, frame_id: int) -> list[dict]:
        with self.lock:
            return [r for r in self.recent if r["frame_id"] > frame_id]

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """(sequence number, overlay JPEG) of a frame newer than `after`, or the same pair on timeout."""
        with self.lock:
            if self._view[0] <= after:
                self.lock.wait(timeout)
            seq, image, result = self._view
            if self._jpeg[0] == seq:
                return self._jpeg
        jpeg = overlay_jpeg(image, result, self.fps) if image is not None and seq > after else None
        with self.lock:
            if jpeg is not None and seq > self._jpeg[0]:
                self._jpeg = (seq, jpeg)
            return seq, jpeg


def overlay_jpeg(image: np.ndarray, result: Result, fps: float) -> bytes | None:
    """BGR frame + Result -> JPEG of the overlay with the current rate."""
    try:
        rgb = to_rgb_uint8(image, "BGR")
    except ValueError:
        return None
    canvas = render(rgb, result)
    cv2.putText(
        canvas,
        f"{fps:.1f} fps",
        (8, canvas.shape[0] - 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return data.tobytes() if ok else None


class Inspector(threading.Thread):
    """Takes frames from the slot, detects, logs durably, then fans out.

    It ends when stop is set, the slot is empty and `capture_done()` says no
    frame is on its way. With `triggers` (a `TriggerQueue`) it inspects one frame
    per trigger instead of every frame, and ends at stop. Any error it did not expect (the results log cannot be
    written, a bug) is kept in `failure` and stops serve: a dead inspector must
    never leave a process that looks healthy.
    """

    def __init__(
        self,
        detector: Detector,
        category: str,
        references,
        slot: LatestFrameSlot,
        log_: ResultsLog,
        state: State,
        sinks: list,
        explainer,
        metrics,
        stop: threading.Event,
        teach: int = 0,
        screen: bool = True,
        operating: Operating | None = None,
        capture_done=lambda: True,
        triggers=None,
        live: bool = True,
    ):
        super().__init__(name="inspector", daemon=True)
        self.detector, self.category, self.references = detector, category, references  # RGB images or None
        # Encoded once here (serve fails at start on an unusable one) and again after each TEACH frame.
        self.memory = detector.remember(references, colour="RGB") if references else None
        self.slot, self.log, self.state, self.sinks = slot, log_, state, sinks
        self.explainer, self.metrics, self.stop, self.teach = explainer, metrics, stop, teach
        self.capture_done, self.triggers, self.live = capture_done, triggers, live
        self.teaching = Teaching(detector, screen) if teach > 0 else None
        self.operating = operating  # how the threshold is set (None: the detector's, as it is)
        if operating is not None and not teach:
            self._settle()  # the threshold in force from the first frame (calibration fails here, at start)
        self.done = threading.Event()
        self.failure: str | None = None
        # Frame ids restart with every process; (run, frame_id) names a frame for good.
        self.run_id = new_run()
        self.handled = 0  # frames taken from the slot and fully logged
        self._times: collections.deque = collections.deque(maxlen=30)

    def run(self) -> None:
        try:
            while True:
                frame = self._next()
                if frame is None:
                    if self.stop.is_set() and (self.triggers is not None or self.capture_done()):
                        self._finish_teaching()  # a recording shorter than --teach: teach what came
                        break
                    continue
                self.handle(frame)
                self.handled += 1
                if self.triggers is not None:
                    self.triggers.inspected()
        except Exception as e:  # whatever it was, serve must stop and say why
            self.failure = self.log.failure or f"inspector stopped: {type(e).__name__}: {e}"
            log.error("%s; stopping serve", self.failure, exc_info=self.log.failure is None)
            self.stop.set()
        finally:
            self.slot.abandon()
            if self.triggers is not None:
                self.triggers.close()
            self.done.set()

    def _next(self) -> Frame | None:
        if self.triggers is None:
            return self.slot.get(timeout=0.2)
        return self.triggers.next_frame(self.slot, self.live, self.stop)

    def handle(self, frame: Frame) -> None:
        if self.teach > 0 and self._learn(frame):
            return
        result = self.inspect(frame)
        record, line = self._line(frame, result)
        self.log.write_line(line)  # durable first
        label = record["label"]
        self.metrics.inspected.inc()
        self.metrics.results.labels(label).inc()
        for stage, ms in result.timings_ms.items():
            self.metrics.stage_ms.labels(stage).observe(ms)
        self._times.append(time.monotonic())
        if len(self._times) > 1:
            self.state.fps = (len(self._times) - 1) / max(1e-6, self._times[-1] - self._times[0])
        self.state.publish(record, frame.image, result)
        for sink in self.sinks:
            sink.offer(record, frame.image)
        if label == "NG" and self.explainer is not None:
            self.explainer.offer(frame, result, self.references, self.run_id)

    def _learn(self, frame: Frame) -> bool:
        """A teach frame is taken for teaching (True); one that cannot be is inspected instead (an ERROR line)."""
        try:
            self.teaching.take(frame, to_rgb_uint8(frame.image, "BGR"))
        except Exception as e:  # not an image, too small, or the encoder failed on it: not a reference
            log.warning("frame %d cannot be a reference (%s); inspecting it instead", frame.frame_id, e)
            return False
        self.teach -= 1
        if self.teach == 0:
            self._finish_teaching()
        return True

    def _finish_teaching(self) -> None:
        """The taught frames screened among themselves, one TEACH line each, the memory, then the threshold."""
        if self.teaching is None or not self.teaching.pending:
            return
        taught = self.teaching.finish(self.references)
        for frame, held, refused in taught.lines:
            self.log.write(teach_line(frame_ref(frame, self.run_id), held, refused))
        self.references, self.memory, self.teach = taught.references or None, taught.memory, 0
        self._settle(taught)

    def _settle(self, taught=None) -> None:
        """The detector with the threshold in force (setting, --calibrate DIR or the taught frames)."""
        if self.operating is None:
            return
        self.detector, point = self.operating.settle(self.detector, self.category, self.memory, taught)
        self.state.operating_point = point.to_dict()

    def _line(self, frame: Frame, result: Result) -> tuple[dict, str]:
        """(record, its strict JSON line); a result that cannot be strict JSON becomes an ERROR line."""
        record = record_of(frame, result, self.run_id)
        try:
            return record, strict_json(record)
        except (ValueError, TypeError) as e:
            why = f"result could not be written as strict JSON ({e}); label {result.label} withheld"
        log.warning("frame %d: %s", frame.frame_id, why)
        try:
            record = record_of(frame, self.detector.error_result(why, self.category), self.run_id)
            return record, strict_json(record)
        except (ValueError, TypeError):
            record = bare_error(frame, self.run_id, why, result)
            return record, strict_json(record)

    def inspect(self, frame: Frame) -> Result:
        if frame.image is None:
            return self.detector.error_result(f"frame could not be decoded: {frame.note}", self.category)
        try:
            return self.detector.detect(frame.image, self.category, self.memory, colour="BGR")
        except ValueError as e:  # wrong size/channels/dtype from the source
            return self.detector.error_result(f"{frame.file}: {e}" if frame.file else str(e), self.category)


class Explainer(threading.Thread):
    """Explains NG frames with the prompt agent, off the inspection path, bounded in queue and time."""

    def __init__(self, agent, log_: ResultsLog, state: State, metrics, maxsize: int, seconds: float):
        super().__init__(name="explainer", daemon=True)
        if maxsize < 1:
            raise ValueError(f"setting explain_queue: {maxsize} must be >= 1")
        self.agent, self.log, self.state, self.metrics, self.seconds = agent, log_, state, metrics, seconds
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.closing = threading.Event()

    def offer(self, frame: Frame, result: Result, references, run: str) -> None:
        try:
            self.queue.put_nowait((frame, result, references, run))
        except queue.Full:
            self.metrics.explain_skipped.inc()

    def run(self) -> None:
        while not self.closing.is_set():
            try:
                frame, result, references, run = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                rgb = to_rgb_uint8(frame.image, "BGR")
                ref = references[0] if references else None
                text = self.agent.explain(result, rgb, ref, deadline_s=self.seconds)
            except Exception as e:  # an explanation is a courtesy; the verdict is already logged
                log.warning("explanation of frame %d failed: %s", frame.frame_id, e)
                continue
            if not self._write(frame_ref(frame, run), text):
                return
            self.state.explain(frame.frame_id, text)
            self.metrics.explained.inc()

    def _write(self, frame: FrameRef, text) -> bool:
        """The explanation line; False when the results log is broken (serve is stopping: see ResultsLog)."""
        try:
            self.log.write(explanation_line(frame, text))
        except OSError as e:
            log.error("explanation of frame %d not written: %s", frame.frame_id, e)
            return False
        return True

    def close(self) -> None:
        """Stop; NG frames still waiting are counted as skipped."""
        self.closing.set()
        if self.ident is not None:
            self.join(self.seconds + 2)
        while not self.queue.empty():
            self.queue.get_nowait()
            self.metrics.explain_skipped.inc()
