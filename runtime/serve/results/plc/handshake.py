"""The PLC handshake: trigger, result, acknowledgement, as one state machine with no transport in it.

A controls engineer expects the conversation every vision system holds with its PLC:

    1. TriggerReady is true while a trigger would be taken (and the PLC's Trigger is low).
    2. The PLC raises Trigger (with a part id, if it has one). lineside takes it on the rising
       edge: TriggersAccepted counts it (TriggersRefused, when refused, with the reason in
       StateWhy), TriggerReady drops, and Busy is true until that part's result is in. The
       PLC holds Trigger until one of the two counters moves, then lowers it.
    3. The result is queued; the oldest unacknowledged one is presented in the result fields
       with its ResultId, and ResultReady is true while any is presented.
    4. The PLC reads the fields and writes ResultAck = ResultId. The next result is presented
       (a new ResultId), or ResultReady drops when none is left.

Results wait, in order, until the PLC acknowledges each (`bound` of them, the plc_results
setting), whatever happens to the connection: a PLC that drops and comes back finds the oldest
unacknowledged result presented, and an acknowledged one is never presented again. While
`bound` results wait, a trigger is refused and `why` says so. An ERROR (a frame that could
not be decoded, an inference that failed, no result within `timeout_s`) is a result like any
other: presented as a reject with its reason code, never as silence. Verdicts that no PLC
trigger asked for (a camera's hardware trigger, HTTP and MQTT triggers) are queued the same way.

Recipes: the PLC writes RecipeIndex; a new index is put in force between parts, never while a part
is in work (then as soon as its result is in), by `select(index)` (serve's inspector: None when it
will judge the next frame by that recipe, else why not). RecipeActive is the index in force; a
refused index (not configured, its references failed screening at start) leaves the recipe in force
as it was, and StateWhy says why until the PLC writes another index.

The transports (opcua.py, modbus_handshake.py) feed `trigger_level`, `ack`, `recipe_index` and `tick` with what
the PLC wrote, `result` with each verdict line, and write `view()` back whenever `version` moves.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from .plc import VERDICTS, score_of, verdict

RESULTS = 8  # unacknowledged results held, the plc_results setting's default
ID_SPACE = 65535  # result ids run 1..65535 and wrap (they fit one Modbus register); 0 means none

# Why a result is a reject without a defect: one code a PLC program can branch on (0: none).
REASONS = {"frame": 1, "inference": 2, "timeout": 3, "other": 9}


def reason_code(error: str | None) -> int:
    """The reason code of an ERROR line's `error` text (0 when there is none)."""
    if not error:
        return 0
    text = error.lower()
    if "could not be decoded" in text or "frame" in text and ("size" in text or "channel" in text):
        return REASONS["frame"]
    if "no result within" in text:
        return REASONS["timeout"]
    if "inference" in text or "not a number" in text or "strict json" in text:
        return REASONS["inference"]
    return REASONS["other"]


@dataclass(frozen=True)
class Presented:
    """One result as the PLC reads it."""

    id: int  # 1..65535
    verdict: str  # OK, NG, ERROR
    code: int  # 0 OK, 1 NG, 2 ERROR (plc.VERDICTS)
    reject: bool  # NG or ERROR: the part goes off the line
    score: float | None
    reason_code: int  # REASONS, 0 for OK and NG
    reason: str  # the ERROR's text, "" otherwise
    frame_id: int
    part_id: str
    trigger_id: str
    seq: int  # the line's seq in the results log (0: not known)


@dataclass(frozen=True)
class View:
    """Every signal the transports write, at one moment."""

    trigger_ready: bool
    busy: bool
    result_ready: bool
    result: Presented | None
    pending: int  # results waiting for an acknowledgement, the presented one included
    accepted: int  # triggers taken since start: the PLC's sign that its edge was seen
    refused: int  # triggers refused since start
    delivered: int  # results acknowledged since start
    state: str  # Ready, Executing, Full, Blocked (no trigger side)
    why: str  # why a trigger would be refused now, "" when it would be taken (and why a recipe was refused)
    recipe_active: int = 0  # the recipe in force (0: the camera's own settings)
    recipe_refused: str = ""  # why the recipe the PLC asked for last is not in force; "" when it is


class Refused(Exception):
    """A trigger that was not taken; the message says why (and is the state's `why`)."""


class Handshake:
    """One camera's conversation. `submit(part_id) -> trigger id` hands a trigger to serve's queue
    (None: this camera takes no triggers, its results are still presented)."""

    def __init__(self, bound: int = RESULTS, submit=None, timeout_s: float = 30.0, clock=time.monotonic, select=None):
        if bound < 1:
            raise ValueError(f"setting plc_results: {bound} must be >= 1")
        self.bound, self.submit, self.timeout_s, self.clock = bound, submit, timeout_s, clock
        self.select = select  # index -> None (in force from the next frame) or why not; None: no recipes
        self.recipe_wanted, self.recipe_active, self.recipe_refused = 0, 0, ""
        self.recipe_due = False  # RecipeIndex moved and is not tried yet (a part was in work)
        self.lock = threading.Lock()
        self.pending: collections.deque[Presented] = collections.deque()
        self.current: tuple[str, str, float] | None = None  # (trigger id, part id, when taken) of the part in work
        self.abandoned: collections.deque[str] = collections.deque(maxlen=64)  # timed-out triggers
        self.level = False  # the PLC's Trigger as last seen
        self.next_id, self.accepted, self.refused, self.delivered, self.lost = 1, 0, 0, 0, 0
        self.last_refusal = ""
        self.version = 0  # moves with every change a transport must write

    # --- what the PLC does -------------------------------------------------------------

    def trigger_level(self, level: bool, part_id: str = "") -> str | None:
        """The PLC's Trigger as read now: a rising edge is a trigger (its id), else None. A refused
        edge raises Refused (counted; the PLC lowers Trigger and raises it again later)."""
        with self.lock:
            rising, self.level = level and not self.level, bool(level)
            if not rising:
                return None
            return self._take(part_id)

    def _take(self, part_id: str) -> str:
        why = self._why()
        if not why:
            try:
                given = self.submit(part_id or None)
            except Exception as e:  # serve's own queue refused it (full with HTTP/MQTT triggers)
                why = str(e) or type(e).__name__
            else:
                self.current = (given, part_id, self.clock())
                self.accepted += 1
                self._changed()
                return given
        self.refused += 1
        self.last_refusal = why
        self._changed()
        raise Refused(why)

    def ack(self, result_id: int) -> bool:
        """The PLC acknowledged `result_id`: True when it was the presented one (the next is presented)."""
        with self.lock:
            if not self.pending or self.pending[0].id != result_id:
                return False  # an old id written again, or none: nothing is delivered twice
            self.pending.popleft()
            self.delivered += 1
            self._changed()
            return True

    def recipe_index(self, index: int) -> None:
        """The PLC's RecipeIndex as read now: a new index is tried at once, or after the part in work."""
        with self.lock:
            if index == self.recipe_wanted:
                return
            self.recipe_wanted, self.recipe_due = int(index), True
            self._recipe()

    def _recipe(self) -> None:
        """Try the index asked for, if one is due and no part is in work (the lock held)."""
        if not self.recipe_due or self.current is not None:
            return
        self.recipe_due = False
        wanted = self.recipe_wanted
        if wanted == self.recipe_active:
            why = None
        elif self.select is None:
            why = "this camera has no recipes (give it recipes: in the cameras file)"
        else:
            why = self.select(wanted)
        if why:
            self.recipe_refused = f"recipe {wanted} refused: {why}; recipe {self.recipe_active} stays in force"
        else:
            self.recipe_active, self.recipe_refused = wanted, ""
        self._changed()

    # --- what serve does ---------------------------------------------------------------

    def result(self, record: dict) -> Presented | None:
        """A verdict line (OK, NG, ERROR) of this camera; other lines, and the late result of a trigger
        that timed out (its ERROR was presented already), are passed by."""
        label = verdict(record)
        if label is None:
            return None
        with self.lock:
            trigger = str(record.get("trigger_id") or "")
            if trigger and trigger in self.abandoned:
                return None
            if self.current is not None and trigger == self.current[0]:
                self.current = None
            presented = self._queue(label, record)
            self._recipe()  # a change asked for while the part was in work, now that it is done
            return presented

    def tick(self) -> None:
        """Called often by the transport: a part in work for longer than timeout_s gets an ERROR result."""
        with self.lock:
            if self.current is None or self.clock() - self.current[2] < self.timeout_s:
                return
            trigger, part, _ = self.current
            self.current = None
            self.abandoned.append(trigger)
            why = f"no result within {self.timeout_s:g} s of trigger {trigger} (camera or inspector not answering)"
            record = {"label": "ERROR", "image_score": None, "error": why, "trigger_id": trigger, "part_id": part}
            self._queue("ERROR", record)
            self._recipe()

    def _queue(self, label: str, record: dict) -> Presented | None:
        if len(self.pending) >= self.bound:  # only results no PLC trigger asked for can find it full
            self.lost += 1
            self._changed()
            return None
        error = record.get("error") if label == "ERROR" else None
        presented = Presented(
            self.next_id,
            label,
            VERDICTS[label],
            label != "OK",
            score_of(record),
            reason_code(error) if label == "ERROR" else 0,
            str(error or ""),
            int(record.get("frame_id") or 0),
            str(record.get("part_id") or ""),
            str(record.get("trigger_id") or ""),
            int(record.get("seq") or 0),
        )
        self.next_id = self.next_id % ID_SPACE + 1
        self.pending.append(presented)
        self._changed()
        return presented

    # --- what the transports write --------------------------------------------------------

    def _why(self) -> str:
        """Why a trigger would be refused now; "" when it would be taken."""
        if self.submit is None:
            return "this camera takes no PLC trigger (serve's trigger setting is not software)"
        if self.current is not None:
            return f"busy with trigger {self.current[0]}"
        if len(self.pending) >= self.bound:
            return f"{len(self.pending)} results wait for the PLC's acknowledgement (plc_results={self.bound})"
        return ""

    def view(self) -> View:
        with self.lock:
            why = self._why()
            if self.submit is None:
                state = "Blocked"
            elif self.current is not None:
                state = "Executing"
            else:
                state = "Full" if why else "Ready"
            if self.lost:
                why = (why + "; " if why else "") + f"{self.lost} results came while the queue was full (in the log)"
            if self.recipe_refused:
                why = (why + "; " if why else "") + self.recipe_refused
            head = self.pending[0] if self.pending else None
            return View(
                not self._why() and not self.level,  # back only once the PLC has lowered Trigger
                self.current is not None,
                head is not None,
                head,
                len(self.pending),
                self.accepted,
                self.refused,
                self.delivered,
                state,
                why,
                self.recipe_active,
                self.recipe_refused,
            )

    def _changed(self) -> None:
        self.version += 1
