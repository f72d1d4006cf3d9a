"""The explanation worker: NG frames put into words off the inspection path.

Explanations come after the verdict, from their own thread, as extra lines that
name the frame they explain; a slow language model never delays inspection.
"""

from __future__ import annotations

import logging
import queue
import threading

from ..detect.frames import to_rgb_uint8
from ..detect.lines import FrameRef, explanation_line
from ..detect.result import Result
from .records import ResultsLog, frame_ref
from .sources import Frame
from .state import State

log = logging.getLogger("lineside.serve")


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
