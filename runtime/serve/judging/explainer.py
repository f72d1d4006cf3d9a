"""The explanation worker: each NG frame's final word, off the inspection path.

Every NG line already carries its rule explanation, measured with the verdict.
This thread asks the prompt agent for a language model's sentence on top (or
takes the rules again when there is no model, or when the model's sentence is
refused), and writes one EXPLANATION line per NG frame it was offered: to the
results log first, then to the page's state, then to every sink (MQTT's
explanation topic, the NG image's sidecar, JSONL, webhooks). A frame it cannot
explain (queue full, serve stopping, the agent failing) still gets its line,
with origin "skipped" and the reason: nothing is dropped without a word.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ...detect.explanation import skipped
from ...detect.lines import explanation_line
from ...detect.result import Result
from ..frames.sources import Frame
from ..results.records import ResultsLog, frame_ref
from .gallery import shown_rgb
from .state import State

log = logging.getLogger("lineside.serve")


class Explainer(threading.Thread):
    """Explains NG frames with the prompt agent, bounded in queue and time; `sinks` get every EXPLANATION line.

    `seconds` bounds one explanation, and also the drain at `close`: what is still
    queued after it is written as skipped.
    """

    def __init__(self, agent, log_: ResultsLog, state: State, metrics, maxsize: int, seconds: float, sinks=()):
        super().__init__(name="explainer", daemon=True)
        if maxsize < 1:
            raise ValueError(f"setting explain_queue: {maxsize} must be >= 1")
        self.agent, self.log, self.state, self.metrics, self.seconds = agent, log_, state, metrics, seconds
        self.sinks = list(sinks)
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.closing = threading.Event()
        self.admitting = threading.Lock()  # an offer's check and put, against close's flag: none falls between
        self.drain_until = float("inf")  # monotonic time after which queued frames are skipped (set by close)
        self.broken = False  # the results log refused a line: serve is stopping

    def offer(self, frame: Frame, result: Result, references, run: str) -> None:
        with self.admitting:
            if self.closing.is_set():
                why = "serve was stopping when the frame was inspected"
            else:
                try:
                    self.queue.put_nowait((frame, result, references, run))
                    return
                except queue.Full:
                    why = f"{self.queue.maxsize} NG frames were already waiting (explain_queue)"
        self._finish(frame, run, skipped(why))

    def run(self) -> None:
        while not self.broken:
            if self.closing.is_set() and (self.queue.empty() or time.monotonic() > self.drain_until):
                return
            try:
                frame, result, references, run = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._finish(frame, run, self.explain(frame, result, references))

    def explain(self, frame: Frame, result: Result, references) -> dict:
        """The agent's explanation of one NG frame, or a skipped one saying why there is none."""
        started = time.perf_counter()
        try:
            rgb = shown_rgb(frame.image, result)  # at the result's bit depth (a 12-bit frame is no 16-bit one)
            ref = references[0] if references else None
            answer = self.agent.explain(result, rgb, ref, deadline_s=self.seconds)
        except Exception as e:  # an explanation is a courtesy; the verdict and its rules are already logged
            log.warning("explanation of frame %d failed: %s", frame.frame_id, e)
            return skipped(f"the explanation failed: {type(e).__name__}: {e}")
        if isinstance(answer, str):  # an agent that returns plain text: it says what it is, not its evidence
            rules = result.to_dict().get("explanation") or {"regions": []}
            answer = {"text": answer, "origin": type(self.agent).__name__, "regions": rules["regions"]}
        log.info(
            "frame %d explained (%s) in %.1f s%s",
            frame.frame_id,
            answer["origin"],
            time.perf_counter() - started,
            f"; model sentence refused: {answer['model_rejected']}" if "model_rejected" in answer else "",
        )
        return answer

    def _finish(self, frame: Frame, run: str, explanation: dict) -> None:
        """The EXPLANATION line: logged durably, then the page's state, then every sink."""
        line = explanation_line(frame_ref(frame, run), explanation)
        try:
            self.log.write(line)
        except (OSError, ValueError) as e:
            log.error("explanation of frame %d not written: %s", frame.frame_id, e)
            self.broken = isinstance(e, OSError)
            return
        if explanation["origin"] == "skipped":
            self.metrics.explain_skipped.inc()
        else:
            self.metrics.explained.inc()
        self.state.explain(frame.frame_id, explanation)
        for sink in self.sinks:
            sink.offer(line, None)

    def close(self) -> None:
        """Stop: frames queued are explained within `seconds` (+2), those left after are written as skipped."""
        self.drain_until = time.monotonic() + self.seconds + 2
        with self.admitting:  # an offer under way puts its frame first: this drain then finds it
            self.closing.set()
        if self.ident is not None:
            self.join(self.seconds + 4)
        while True:
            try:
                frame, _, _, run = self.queue.get_nowait()
            except queue.Empty:
                return
            self._finish(frame, run, skipped("serve stopped before the frame's turn came (the queue was drained)"))
