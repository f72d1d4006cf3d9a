"""Operator feedback: an NG confirmed or called a false alarm, an OK called a miss; one line each.

Every decision is its own FEEDBACK line in the durable results log, naming the
frame (run, frame_id), who decided and when, so that what the line's people
thought of the verdicts is kept with the verdicts. A false alarm may also be
taught: its frame joins the known-good references and the memory is rebuilt on
this module's own thread (one at a time, in order), then swapped in whole; the
frame is also written beside the reference images given at start, so that the
next start learns it too.

A click is not proof that the part was good: the frame is screened first, by
the checks --teach applies (detect/screening.py: empty, blurred, an outlier
among the references it would join), unless teach_screen is off. A refused
frame is not taught; its FEEDBACK line and the answer to the page say why
(`reference_refused`). Once the memory holds a taught frame, a TEACH line with
`by` records who taught which frame and how many references serve then holds
(or, `rejected`, why the rebuild failed).

Calls that change anything need the configured token (`api_token`), compared in
constant time; with no token configured they are all refused.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import logging
import queue
import threading
from pathlib import Path

import cv2
import numpy as np

from ...detect.lines import DECISIONS, FrameRef, feedback_line, teach_line
from ...detect.screening import screen_joining
from ..judging.state import State

log = logging.getLogger("lineside.serve")

WHO = 64  # characters of a name or badge; printable ones only (no C1 controls, bidi overrides, line separators)
TAUGHT = 10_000  # false alarms remembered as taught (a frame is refused a second time)
GLOBALS = 4_096  # references' global embeddings kept for screening, by content
NEEDS = {"confirmed": "NG", "false_alarm": "NG", "miss": "OK"}  # the verdict each decision is about


class Refused(Exception):
    """A feedback call that cannot be done: `status` is its HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def authorised(token: str, headers) -> bool:
    """True when `headers` carry the configured, non-empty token: 'Authorization: Bearer TOKEN', or
    'X-Lineside-Token: TOKEN' for PLCs and scripts that cannot write an Authorization header.

    Both sides are hashed before the constant-time compare, so that neither the token's length nor its
    first differing byte shows in the time taken; header text that is not UTF-8 is compared as its bytes.
    """
    if not token:
        return False
    bearer = headers.get("Authorization") or ""
    given = [bearer[len("Bearer ") :].strip()] if bearer.startswith("Bearer ") else []
    given += [headers.get("X-Lineside-Token") or ""]
    want = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    found = [hmac.compare_digest(hashlib.sha256(g.encode("utf-8", "surrogatepass")).digest(), want) for g in given]
    return any(found)


def frame_of(record: dict) -> FrameRef:
    """The head of a logged line back as a FrameRef, whatever fields the head has gained."""
    names = {f.name for f in dataclasses.fields(FrameRef)}
    return FrameRef(**{k: v for k, v in record.items() if k in names})


class Feedback:
    """Writes decisions; teaches false alarms through `inspector.add_references` on its own thread."""

    def __init__(self, state: State, results_log, inspector, reference_dir: Path | None = None):
        self.state, self.log, self.inspector, self.reference_dir = state, results_log, inspector, reference_dir
        self.queue: queue.Queue = queue.Queue()
        self.pending = 0  # false alarms queued or being taught
        self.lock = threading.Lock()
        self.rebuilt = 0  # memories rebuilt with an operator's false alarm in them
        self.problem = ""  # why the last rebuild failed, "" when it did not
        self._thread: threading.Thread | None = None
        self.taught: collections.OrderedDict = collections.OrderedDict()  # (run, frame_id) already taught, bounded
        self._claim = threading.Lock()  # one teaching decision at a time: screened and marked before the next
        self._globals: collections.OrderedDict = collections.OrderedDict()  # reference content -> global embedding

    def can_teach(self) -> bool:
        return self.inspector is not None and self.inspector.teach == 0 and bool(self.inspector.references)

    def status(self) -> dict:
        held = len(self.inspector.references or ()) if self.inspector is not None else 0
        return {
            "references": held,
            "can_teach": self.can_teach(),
            "rebuilding": self.pending > 0,
            "rebuilt": self.rebuilt,
            "problem": self.problem,
        }

    def decide(self, body: dict) -> dict:
        """Validates one decision, writes its line, queues the teaching; raises Refused."""
        run, frame_id, decision, by, teach = _fields(body)
        record = self.state.find(run, frame_id)
        if record is None:
            raise Refused(404, f"frame {run}/{frame_id} is no longer held (only the recent results and NG gallery are)")
        if record["label"] != NEEDS[decision]:
            raise Refused(
                409, f"{decision} is said of an {NEEDS[decision]} frame; frame {frame_id} is {record['label']}"
            )
        if not teach:
            return self._write(record, decision, by)
        with self._claim:  # two clicks at once: the second sees the first's mark
            if (run, frame_id) in self.taught:  # a second click, or two operators: one copy in the memory
                raise Refused(409, f"frame {run}/{frame_id} is taught already; it is among the references")
            if not self.can_teach():
                raise Refused(409, "false alarms cannot be taught: serve holds no references (start with --references)")
            kept = self.state.gallery_frame(run, frame_id)
            if kept is None:
                raise Refused(404, f"the picture of frame {run}/{frame_id} is no longer kept (ng_gallery)")
            image = kept.image_bgr()
            refused = self._screen(image)
            if refused:
                self.problem = f"frame {run}/{frame_id} not taught: {refused}"
                log.warning("%s (asked by %s)", self.problem, by)
                return self._write(record, decision, by, refused=refused)
            line = self._write(record, decision, by, teach=True)
            self.taught[(run, frame_id)] = True
            while len(self.taught) > TAUGHT:
                self.taught.popitem(last=False)
        with self.lock:
            self.pending += 1
            if self._thread is None:  # one worker for the life of serve, idle on the queue
                self._thread = threading.Thread(target=self._teach, name="feedback", daemon=True)
                self._thread.start()
        self.queue.put((record, by, image))
        return line

    def _write(self, record: dict, decision: str, by: str, teach: bool = False, refused: str | None = None) -> dict:
        line = feedback_line(frame_of(record), decision, by, reference_added=teach, reference_refused=refused)
        self.log.write(line)
        self.state.decided(record["run"], record["frame_id"], decision)
        return line

    def _screen(self, image_bgr) -> str | None:
        """Why the frame may not join the references (detect/screening.py's checks), or None; None too
        when teach_screen is off, as it is for --teach."""
        if not getattr(self.inspector, "screen", True):
            return None
        encoder = self.inspector.detector.encoder
        references = list(self.inspector.references)
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        try:
            trusted = [self._global(encoder, r) for r in references]
            candidate = np.asarray(encoder.encode(rgb)[0], np.float32).reshape(-1)
        except Exception as e:  # the encoder failed on it: then it is no reference either
            return f"the image encoder failed on it ({type(e).__name__}: {e})"
        return screen_joining(rgb, candidate, references, np.stack(trusted))

    def _global(self, encoder, rgb) -> np.ndarray:
        """A reference's global embedding, encoded once per content (the references only grow)."""
        key = hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16)
        key.update(repr(rgb.shape).encode())
        key = key.hexdigest()
        if key not in self._globals:
            self._globals[key] = np.asarray(encoder.encode(rgb)[0], np.float32).reshape(-1)
            while len(self._globals) > GLOBALS:
                self._globals.popitem(last=False)
        return self._globals[key]

    def _teach(self) -> None:
        while True:
            record, by, image = self.queue.get()
            run, frame_id = record["run"], record["frame_id"]
            try:
                held = self.inspector.add_references([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])
                self.rebuilt, self.problem = self.rebuilt + 1, ""
                log.info(
                    "frame %s/%d taught as known-good by %s: %d references, memory rebuilt", run, frame_id, by, held
                )
                self._record(record, held, by)
                self._save(run, frame_id, image)
            except Exception as e:  # the decision is logged; the memory stays as it was
                self.problem = f"frame {run}/{frame_id} not taught: {type(e).__name__}: {e}"
                log.error(self.problem)
                self._record(record, len(self.inspector.references or ()), by, self.problem)
            finally:
                with self.lock:
                    self.pending -= 1

    def _record(self, record: dict, held: int, by: str, rejected: str | None = None) -> None:
        """The TEACH line of a frame an operator taught: who, which frame, and what serve holds now."""
        try:
            self.log.write(teach_line(frame_of(record), held, rejected, by=by))
        except Exception as e:  # a log that cannot be written stops serve through its own failure
            log.error("the TEACH line of frame %s/%d could not be written: %s", record["run"], record["frame_id"], e)

    def _save(self, run: str, frame_id: int, image) -> None:
        """Beside the references given at start (if a folder): the next start learns the frame too."""
        if self.reference_dir is None or not Path(self.reference_dir).is_dir():
            return
        path = Path(self.reference_dir) / f"feedback-{run}-{frame_id:08d}.png"
        if not cv2.imwrite(str(path), image):
            log.warning("taught frame not saved to %s (the references folder cannot be written)", path)


def _fields(body) -> tuple[str, int, str, str, bool]:
    if not isinstance(body, dict):
        raise Refused(400, 'send a JSON object: {"run": ..., "frame_id": ..., "decision": ..., "by": ...}')
    run, frame_id, decision = body.get("run"), body.get("frame_id"), body.get("decision")
    by, teach = body.get("by"), body.get("add_reference", False)
    if not isinstance(run, str) or not run:
        raise Refused(400, f"run must be the frame's run (a string from its result line), got {run!r}")
    if isinstance(frame_id, bool) or not isinstance(frame_id, int) or frame_id < 1:
        raise Refused(400, f"frame_id must be the frame's id (a whole number >= 1), got {frame_id!r}")
    if decision not in DECISIONS:
        raise Refused(400, f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if not isinstance(by, str) or not 0 < len(by.strip()) <= WHO or not by.strip().isprintable():
        raise Refused(400, "by must say who decided: a name or badge, 1 to 64 printable characters")
    if not isinstance(teach, bool) or (teach and decision != "false_alarm"):
        raise Refused(400, "add_reference is true or false, and true only with decision false_alarm")
    return run, frame_id, decision, by.strip(), teach
