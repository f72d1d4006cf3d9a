"""The inspection worker: frame in, one durable result line out, then the fan-out.

Every frame the inspector takes gets exactly one line in the durable results log,
flushed before the result goes anywhere else; a frame that cannot be decoded or
whose inference fails is logged as ERROR, never as OK. Explanations come later
(explainer.py); what the page shows lives in state.py.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time

from ...detect.detector import Detector
from ...detect.frames import to_rgb_uint8
from ...detect.lines import new_run, teach_line
from ...detect.result import Result
from ..frames.capture import LatestFrameSlot
from ..frames.sources import Frame
from ..results.provenance import Provenance
from ..results.records import ResultsLog, bare_error, frame_ref, record_of, strict_json
from .recipes import Recipe
from .state import State
from .teaching import Operating, Teaching

log = logging.getLogger("lineside.serve")


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
        camera: str = "",
        codes=None,
        recipes=(),
    ):
        super().__init__(name=f"inspector-{camera}" if camera else "inspector", daemon=True)
        self.codes = codes  # a CodeReader: the part id read from a code in each inspected frame (None: not read)
        self.detector, self.category, self.references = detector, category, references  # RGB images or None
        # Encoded once here (serve fails at start on an unusable one) and again after each TEACH frame.
        self.memory = detector.remember(references, colour="RGB") if references else None
        self.slot, self.log, self.state, self.sinks = slot, log_, state, sinks
        self.explainer, self.metrics, self.stop, self.teach = explainer, metrics, stop, teach
        self.capture_done, self.triggers, self.live = capture_done, triggers, live
        self.screen = screen  # teach_screen: also for false alarms taught later (feedback.py)
        self.teaching = Teaching(detector, screen) if teach > 0 else None
        self.operating = operating  # how the threshold is set (None: the detector's, as it is)
        self.point = None  # the OperatingPoint in force, once settled
        self.provenance = Provenance.of(detector)  # each verdict line's audit block
        if operating is not None and not teach:
            self._settle()  # the threshold in force from the first frame (calibration fails here, at start)
        # Recipes (recipes.py): index -> Recipe; 0 is what serve started with. `wanted` is put in force by
        # this thread between two frames, so a frame is judged wholly by one recipe.
        self.recipes = {r.index: r for r in recipes}
        if self.recipes:
            if teach:
                raise ValueError("recipes and teach: a recipe brings its own references; leave teach at 0")
            self.recipes[0] = self._recipe_now()
            self.provenance.recipe = "0"
        self.recipe_lock = threading.Lock()
        self.wanted = None  # a Recipe to put in force before the next frame
        self.done = threading.Event()
        self.failure: str | None = None
        # Frame ids restart with every process; (run, frame_id) names a frame for good.
        self.run_id = new_run()
        self.handled = 0  # frames taken from the slot and fully logged
        self.progressed = time.monotonic()  # when the last frame was handled (or inspection began): for health
        self._times: collections.deque = collections.deque(maxlen=30)

    def run(self) -> None:
        self.progressed = time.monotonic()
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
                self.progressed = time.monotonic()
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

    def select_recipe(self, index: int) -> str | None:
        """Put recipe `index` in force from the next frame on: None when it will be, else why not (unknown, or
        its references failed screening at start); the recipe in force then stays. Any thread may call it."""
        recipe = self.recipes.get(index)
        if recipe is None:
            known = ", ".join(map(str, sorted(self.recipes))) or "none (no recipes: in the cameras file)"
            return f"recipe {index} is not configured (recipes: {known})"
        if recipe.refused:
            return f"recipe {index}: {recipe.refused}"
        with self.recipe_lock:
            self.wanted = recipe
        return None

    def _recipe_now(self):
        """The configuration in force, as a Recipe (recipe 0: the camera's own settings)."""
        return Recipe(0, self.category, self.detector, self.references, self.memory, self.point, "")

    def _switch(self) -> None:
        with self.recipe_lock:
            recipe, self.wanted = self.wanted, None
        if recipe is None:
            return
        self.detector, self.category = recipe.detector, recipe.category
        self.references, self.memory = recipe.references, recipe.memory
        self.provenance.recipe = recipe.name
        if recipe.point is not None:
            self.state.operating_point = recipe.point.to_dict()
        log.info(
            "recipe %d in force: category %s, threshold %g",
            recipe.index,
            recipe.category,
            recipe.detector.settings.threshold,
        )

    def handle(self, frame: Frame) -> None:
        if self.wanted is not None:
            self._switch()
        if self.teach > 0 and self._learn(frame):
            return
        if self.codes is not None and frame.image is not None and frame.part_from != "trigger":
            code = self.codes.read(frame.image)
            frame = dataclasses.replace(frame, part_id=code, part_from="code") if code else frame
        result = self.inspect(frame)
        record, line = self._line(frame, result)
        record.update(self.log.write_line(line))  # durable first; the record gains its place in the chain
        label = record["label"]
        self.metrics.inspected.inc()
        self.metrics.results.labels(label).inc()
        for stage, ms in result.timings_ms.items():
            if ms is not None:
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000.0)
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
        self.detector, self.point = self.operating.settle(self.detector, self.category, self.memory, taught)
        self.state.operating_point = self.point.to_dict()

    def _line(self, frame: Frame, result: Result) -> tuple[dict, str]:
        """(record, its strict JSON line); a result that cannot be strict JSON becomes an ERROR line."""
        record = record_of(frame, result, self.run_id, self.provenance)
        try:
            return record, strict_json(record)
        except (ValueError, TypeError) as e:
            why = f"result could not be written as strict JSON ({e}); label {result.label} withheld"
        log.warning("frame %d: %s", frame.frame_id, why)
        try:
            record = record_of(frame, self.detector.error_result(why, self.category), self.run_id, self.provenance)
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

    def add_references(self, images_rgb: list) -> int:
        """Known-good images (HxWx3 uint8 RGB) joined to the references: the memory is built from them all
        on the caller's thread, then swapped in at once, so inspection never waits for it nor sees half of
        it. Returns how many references serve holds. Refused (ValueError) while teaching, or when serve
        judges by the language branch alone (references would change how every frame is scored)."""
        if self.teach > 0 or not self.references:
            raise ValueError(
                "serve holds no known-good references to add to (still teaching, or started without "
                "--references DIR or --teach N)"
            )
        references = list(self.references) + list(images_rgb)
        memory = self.detector.remember(references, colour="RGB")
        self.references, self.memory = references, memory
        return len(references)
