"""The result line: the one shape of every line serve and detect write, in strict JSON.

Every line opens with the same head: the schema version and which frame it is
about (`FrameRef`). Then the label, and what that label carries:

    OK / NG / ERROR   the Result's fields (`Result.to_dict`): score, regions, timings,
                      providers, precisions (per graph), bundle_id, settings, error;
                      an NG line also its rule `explanation`, measured with the verdict
    TEACH             how many references serve holds after taking this frame as one,
                      or (`rejected`) why it refused the frame as a reference; `by`, the
                      operator, when a false alarm taught it (FEEDBACK then TEACH)
    EXPLANATION       serve's final word on the NG frame in the head, one per NG frame the
                      explainer took: `explanation` of the same shape as the NG line's, whose
                      `origin` says where the text came from

An explanation is {"text", "origin", "regions", ...}. `origin` is "rules" (measured:
runtime/detect/explanation.py), the language model's file name (a sentence that passed
runtime/prompts/checks.py; `latency_s` says how long it took), or "skipped": no
explanation could be made for the frame, `reason` says why (the explanation queue was
full, serve stopped before it was reached, the model failed), `text` is "" and
`regions` []. When a model's sentence is refused, the line carries the rules' text
with origin "rules" and `model_rejected` saying why.

serve adds two things detect cannot know: an `audit` block on OK / NG / ERROR lines
(runtime/serve/results/provenance.py: image and model hashes, precision verdicts, calibration
id) and, on every line of its results log, the hash chain's seq, prev and hash
(runtime/audit.py).

result-line.schema.json, beside this module, is the same contract for readers,
and the tests validate every line they produce against it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .result import Result

SCHEMA = "lineside.result/1"
SCHEMA_FILE = Path(__file__).with_name("result-line.schema.json")


def new_run() -> str:
    """This process's run name: frame ids restart with every process, (run, frame_id) names a frame for good."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def strict_json(line) -> str:
    """One JSON text with no NaN/Infinity tokens; ValueError (or TypeError) when that is impossible."""
    return json.dumps(line, allow_nan=False)


@dataclass(frozen=True)
class FrameRef:
    """Which frame a line is about, the same for every label."""

    run: str  # new_run() of the process that took the frame
    frame_id: int  # 1, 2, ... within the run
    time: float  # unix seconds at capture (serve) or reading (detect)
    source: str  # where frames come from: serve's source spec, the folder detect found the file in
    file: str = ""  # the image file's name inside `source`, printable whatever its bytes; "" for cameras, videos
    part_id: str | None = None  # the part's own id: the trigger's, a code in the frame's, or the file name's
    trigger_id: str | None = None  # serve with a trigger: the trigger this frame was taken for
    trigger_time: float | None = None  # and when it arrived (unix seconds; the frame's `time` is at or after it)
    camera: str = ""  # serve: the camera's id (camera_id, or its id in the cameras file); "" when unnamed
    frame_index: int | None = None  # 0-based place of the frame in its video file or image folder

    def head(self) -> dict:
        head = {"schema": SCHEMA, "run": self.run, "frame_id": self.frame_id, "time": self.time, "source": self.source}
        if self.camera:
            head["camera"] = self.camera
        if self.file:
            head["file"] = self.file
        if self.frame_index is not None:
            head["frame_index"] = self.frame_index
        if self.part_id is not None:
            head["part_id"] = self.part_id
        if self.trigger_id is not None:
            head |= {"trigger_id": self.trigger_id, "trigger_time": self.trigger_time}
        return head


def result_line(frame: FrameRef, result: Result, fields: dict | None = None) -> dict:
    """An OK / NG / ERROR line; `fields` is `result.save(...)`'s dict when the maps were written as PNG."""
    return frame.head() | (result.to_dict() if fields is None else fields)


def error_line(frame: FrameRef, why: str, like: Result) -> dict:
    """An ERROR line for `frame` with `like`'s category, providers and bundle_id, but no settings.

    The last resort when even the detector's own ERROR result is not strict JSON:
    the settings are the one part of it that can be, so they are left out ({}).
    """
    error = Result(
        "ERROR",
        1.0,
        None,
        category=str(like.category),
        providers=tuple(map(str, like.providers)),
        precisions={str(k): str(v) for k, v in like.precisions.items()},
        bundle_id=str(like.bundle_id),
        settings={},
        error=why,
    )
    return result_line(frame, error)


def teach_line(frame: FrameRef, references: int, rejected: str | None = None, by: str | None = None) -> dict:
    """A TEACH line: `frame` became a known-good reference, the `references`-th one; or, with `rejected`,
    it was refused as one (empty, blurred, an outlier among the taught frames) and serve holds `references`.
    `by`: the operator whose false alarm taught it (feedback), absent for --teach's first frames."""
    line = frame.head() | {"label": "TEACH", "references": references}
    line |= {"by": str(by)} if by else {}
    return line | {"rejected": str(rejected)} if rejected else line


DECISIONS = ("confirmed", "false_alarm", "miss")


def feedback_line(
    frame: FrameRef, decision: str, by: str, reference_added: bool = False, reference_refused: str | None = None
) -> dict:
    """A FEEDBACK line: an operator's `decision` on the frame in the head (confirmed or false_alarm on an NG,
    miss on an OK), who decided (`by`), when (`decided_at`, unix seconds), and whether a false alarm is being
    taught as a known-good reference, or (`reference_refused`) why serve would not take it as one."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    line = frame.head() | {"label": "FEEDBACK", "decision": decision, "by": str(by), "decided_at": time.time()}
    line |= {"reference_refused": str(reference_refused)} if reference_refused else {}
    return line | {"reference_added": True} if reference_added else line


def explanation_line(frame: FrameRef, explanation: dict) -> dict:
    """An EXPLANATION line: `explanation` (see above) is about the frame in the head, written at `explained_at`."""
    return frame.head() | {"label": "EXPLANATION", "explanation": dict(explanation), "explained_at": time.time()}
