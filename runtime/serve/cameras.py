"""Several cameras in one serve process: the cameras file, and one camera's own workers.

One process, one detector (one set of onnxruntime sessions, one GPU context),
and per camera everything that is about that camera: its source, capture
thread, latest-frame slot, inspector (with its own references, threshold and
operating point), the state its page tile reads, its triggers and sinks. Every
line names its camera. A camera whose source fails or whose inspector dies is
reported (its own readiness, the log) and stopped; the others go on.

The cameras file is YAML: a list of cameras under `cameras:` (or the list
alone), each an `id` and any setting a camera may have of its own (the job's,
the serve settings about one camera, the detector settings that need no
sessions of their own, such as the threshold), and its `recipes:`, the
configurations a PLC selects by index (judging/recipes.py). What is one for
the process (the bundle, the HTTP address, the sessions' settings, the agent's)
is refused there, naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..detect.detector import Detector
from ..detect.encoders import SESSION_SETTINGS
from ..detect.frames import list_images, read_image
from ..options import convert
from ..settings import SECTIONS, Settings, owner_of
from .frames.capture import Capture, LatestFrameSlot
from .frames.codes import CodeReader
from .frames.sources import FrameSource
from .frames.triggers import MqttTriggers, TriggerQueue
from .judging.pipeline import Inspector
from .judging.recipes import prepare, read_recipes
from .judging.state import State
from .judging.teaching import Operating
from .results.mqtt import MqttOptions

log = logging.getLogger("lineside.serve")

MAX_FILE = 1 << 20  # bytes of a cameras file
CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # (as ServeSettings checks camera_id)
PROCESS_WIDE = {
    "bundle",
    "cameras",
    "camera_id",
    "host",
    "port",
    "http_max_connections",
    "http_read_timeout_s",
    "show",
    "use_sam",
    *SESSION_SETTINGS,
    *(f.name for f in dataclasses.fields(SECTIONS["agent"])),
}


@dataclass(frozen=True)
class CameraSpec:
    id: str  # "" for the one unnamed camera of a process without a cameras file
    settings: Settings  # the process's settings with this camera's own over them
    own: dict  # the settings the cameras file gave this camera (converted)
    recipes: tuple = ()  # RecipeSpec, those the PLC may select by index (judging/recipes.py)

    def detector_for(self, shared: Detector) -> Detector:
        """The shared detector (its sessions) with this camera's own detector settings, if it has any."""
        mine = {k: v for k, v in self.own.items() if owner_of[k] == "detector"}
        return shared.with_settings(dataclasses.replace(shared.settings, **mine)) if mine else shared


def read_cameras(path: Path, base: Settings) -> list[CameraSpec]:
    """The cameras of a cameras file over `base`; ValueError naming the file, the camera and what is wrong."""
    import yaml  # only a process with a cameras file needs it

    try:
        with open(path, "rb") as f:  # at most MAX_FILE: /dev/zero or a log named by mistake never fills memory
            raw = f.read(MAX_FILE + 1)
        if len(raw) > MAX_FILE:
            raise ValueError(f"cameras file {path}: over {MAX_FILE // 1024} kB; is it the cameras file?")
        data = yaml.load(raw.decode("utf-8"), Loader=_yaml_loader())  # a safe loader, stricter
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        # YAML's message spans lines ("...\n  in <unicode string>, line 3"): serve refuses in one
        raise ValueError(f"cameras file {path}: {' '.join(str(e).split())}") from e
    entries = data.get("cameras") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) != {"cameras"}:
        raise ValueError(f"cameras file {path}: only a `cameras:` list at the top, got {sorted(map(str, data))}")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"cameras file {path}: give a list of cameras, each with an id and a source")
    specs = [_camera(path, n, entry, base) for n, entry in enumerate(entries, 1)]
    ids = [s.id for s in specs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"cameras file {path}: camera ids must differ; {', '.join(repeated)} given twice")
    return specs


def _camera(path: Path, n: int, entry, base: Settings) -> CameraSpec:
    if not isinstance(entry, dict):
        raise ValueError(f"cameras file {path}: camera {n} must be a mapping of settings, got {type(entry).__name__}")
    given_id = entry.get("id", "")
    if isinstance(given_id, bool) or not isinstance(given_id, (str, int)):  # `id: yes` is YAML's True
        raise ValueError(f"cameras file {path}: camera {n}'s id must be text, got {given_id!r:.40}")
    camera = str(given_id)
    where = f"cameras file {path}, camera {camera or n}"
    if not CAMERA_ID.fullmatch(camera):
        raise ValueError(f"{where}: id {camera!r} must be 1 to 64 letters, digits, '.', '-' or '_'")
    if "source" not in entry:
        raise ValueError(f"{where}: no source (a camera index, URL, video file or image folder)")
    given = {str(k): v for k, v in entry.items() if k not in ("id", "recipes")}
    unknown = sorted(set(given) - set(owner_of))
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; see python -m runtime.serve --help for the names")
    shared = sorted(set(given) & PROCESS_WIDE)
    if shared:
        raise ValueError(f"{where}: {', '.join(shared)} is one for the whole process; set it outside the cameras file")
    own = {k: _converted(k, v, where) for k, v in given.items()}
    try:
        settings = base.replace(**own, camera_id=camera, cameras=None)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    recipes = read_recipes(entry["recipes"], where, settings) if "recipes" in entry else ()
    return CameraSpec(camera, settings, own, recipes)


def _converted(name: str, value, where: str):
    """`value` as the setting's type; a YAML number where text is wanted (`source: 0`) is taken as its text.

    An empty value (`source:`, null) and a list holding anything but text (`sink: [{url: ...}]`) are refused
    here: taken as they are, they would become the source "None" or a sink that fails at start."""
    if value is None:
        raise ValueError(f"{where}: {name} has no value; give one, or leave {name} out")
    try:
        converted = convert(name, value, where)
    except ValueError:
        if isinstance(value, int) and not isinstance(value, bool):
            return convert(name, str(value), where)
        raise
    if isinstance(converted, tuple) and not all(isinstance(x, str) for x in converted):
        raise ValueError(f"{where}: {name} must be a list of text, got {value!r:.80}")
    return converted


def _yaml_loader():
    """PyYAML's safe loader refusing a key given twice in one mapping (it would keep the last in silence);
    keys brought in by a merge (`<<: *defaults`) may still be overridden, as YAML means them to be."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=True) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
            twice = sorted({str(k) for k in keys if keys.count(k) > 1})
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{', '.join(twice)} given twice in one mapping", node.start_mark
                )
            return super().construct_mapping(node, deep)

    return Strict


class Camera:
    """One camera's workers, stopped by its own `stop` (set by its failure or by serve's shutdown)."""

    def __init__(self, spec: CameraSpec, source: FrameSource, detector: Detector, metrics, results_log, sinks, explain):
        self.id, self.settings = spec.id, spec.settings
        s, job, max_pixels = spec.settings.serve, spec.settings.job, spec.settings.detector.max_image_pixels
        self.source, self.results_log, self.sinks = source, results_log, sinks
        self.metrics, self.state, self.stop = metrics.camera(spec.id), State(s.recent), threading.Event()
        software = s.trigger == "software"
        self.triggers = TriggerQueue(s.trigger_queue, self.metrics, source.fire) if software else None
        topic = s.trigger_mqtt
        self.trigger_topic = MqttTriggers(topic, self.triggers, MqttOptions.of(s), spec.id) if topic else None
        references = [read_image(p, max_pixels) for p in list_images([job.references])] if job.references else None
        if not detector.has_language and not references and s.teach == 0:
            raise ValueError(f"bundle {job.bundle} has no language branch: give --references DIR or --teach N")
        good = [read_image(p, max_pixels) for p in list_images([job.calibrate])] if job.calibrate else None
        operating = Operating(
            good,
            job.calibrate,
            job.false_alarm_target,
            s.calibrate_teach,
            s.teach,
            job.false_alarm_mode,
            job.false_alarm_confidence,
        )
        self.slot = LatestFrameSlot()
        self.explainer = explain(self) if s.explain else None
        self.capture = Capture(
            source,
            self.slot,
            self.stop,
            self.metrics,
            s.max_fps,
            s.loop,
            s.reconnect_max_s,
            spec.id,
            s.part_id_pattern,
            wait_for_source=s.wait_for_source,
        )
        self.inspector = Inspector(
            detector,
            job.category,
            references,
            self.slot,
            results_log,
            self.state,
            sinks,
            self.explainer,
            self.metrics,
            self.stop,
            s.teach,
            screen=s.teach_screen,
            operating=operating,
            capture_done=self._capture_done,
            triggers=self.triggers,
            live=source.live,
            camera=spec.id,
            codes=CodeReader(s.part_id_code) if s.part_id_code != "off" else None,
            recipes=[prepare(r, detector, max_pixels) for r in spec.recipes],  # screened at start
        )
        self.metrics.since_inspection.set_function(lambda: time.monotonic() - self.inspector.progressed)

    def _capture_done(self) -> bool:
        """No frame can still come: capture has ended (or never started), or the source is live (no waiting)."""
        return self.source.live or self.capture.finished.is_set() or self.capture.ident is None

    def failure(self) -> str | None:
        """Why this camera stopped (a worker died, the results log broke); None while all is well."""
        for problem in (self.results_log.failure, self.inspector.failure, self.capture.failure):
            if problem:
                return problem
        if self.inspector.ident is not None and not self.inspector.is_alive() and not self.stop.is_set():
            return "inspector stopped"
        return None

    def ready(self) -> tuple[bool, str]:
        problem = self.failure()
        if problem:
            return False, problem
        if not self.capture.connected.is_set():
            return False, self.capture.problem or "source not connected"
        blind = self.capture.blind()
        if blind:
            return False, f"source {self.source.spec!r}: {blind}"
        if not self.inspector.is_alive():
            return False, "inspector stopped"
        return True, ""

    def stalled(self) -> str | None:
        """Why this camera has not done its job for longer than health_stall_s, or None.

        Its job is to inspect frames as they come: a free-running live camera must inspect one at least every
        health_stall_s (a lost source, a connected one that sends nothing and a hung inspector all stop that);
        a triggered camera (trigger software, or camera_trigger naming a line) may rightly wait for hours, so it
        stalls only when its source is lost or a trigger waits that long; a recording, when nothing of it is
        inspected that long. A camera that stopped (its failure says why) or finished is not stalled."""
        s, capture, now = self.settings.serve, self.capture, time.monotonic()
        if self.inspector.ident is None or self.stop.is_set() or self.finished():
            return None
        bound = s.health_stall_s
        idle = now - self.inspector.progressed
        triggered = self.triggers is not None or s.camera_trigger != "off"
        if not self.source.live:
            if triggered or idle <= bound:
                return None
            return f"inspector stalled: nothing of {self.source.spec!r} inspected for {idle:.0f} s"
        if capture.lost_at is not None and now - capture.lost_at > bound and idle > bound:
            return f"source {self.source.spec!r} away for {now - capture.lost_at:.0f} s: {capture.problem or 'lost'}"
        if triggered:
            oldest = self.triggers.oldest() if self.triggers is not None else None
            if oldest is not None and time.time() - oldest > bound:
                return f"a trigger has waited {time.time() - oldest:.0f} s for its frame"
            return None
        if idle <= bound:
            return None
        if capture.frame_at is not None and now - capture.frame_at < bound:
            return f"inspector stalled: nothing inspected for {idle:.0f} s while the source delivers"
        why = f": {blind}" if (blind := capture.blind()) else " delivers no frames"
        return f"nothing inspected for {idle:.0f} s: source {self.source.spec!r}{why}"

    def condition(self) -> tuple[str, str]:
        """(online | degraded | offline, why) for the MQTT status topic; ("", "") while it is starting and
        nothing is known yet (a first opening that has not been tried)."""
        problem = self.failure()
        if problem:
            return "offline", problem
        if self.finished():
            return "offline", "recording read to its end" if not self.source.live else "stopped"
        stalled = self.stalled()
        if stalled:
            return "degraded", stalled
        ready, why = self.ready()
        if ready:
            return "online", ""
        if not self.capture.tried.is_set():
            return "", ""
        return "degraded", why

    def counters(self) -> dict:
        out = {name: self.metrics.count(name) for name in ("captured", "inspected", "dropped")}
        return out | {label.lower(): self.metrics.count("results", label=label) for label in ("OK", "NG", "ERROR")}

    def start(self) -> None:
        if self.explainer is not None:
            self.explainer.start()
        self.inspector.start()
        self.capture.start()
        if self.trigger_topic is not None:
            self.trigger_topic.start()

    def finished(self) -> bool:
        """A recording has been read and every frame inspected, or this camera has stopped."""
        if self.capture.finished.is_set() and self.inspector.handled >= self.capture.frames:
            return True
        return self.stop.is_set() and (self.inspector.ident is None or self.inspector.done.is_set())

    def halt(self) -> None:
        """Stop reading and inspecting (drained as at shutdown); explainers and sinks are closed by the server."""
        self.stop.set()
        if self.trigger_topic is not None:
            self.trigger_topic.close()
        if self.capture.ident is not None:
            self.capture.join(5)
        if self.inspector.ident is not None:
            self.inspector.done.wait(30)
        if self.explainer is not None:
            self.explainer.close()


class Serialised:
    """The prompt agent shared by several cameras' explainers, one explanation at a time (llama.cpp is not
    safe to call from two threads)."""

    def __init__(self, agent):
        self.agent, self.lock = agent, threading.Lock()

    def explain(self, *args, **kwargs):
        with self.lock:
            return self.agent.explain(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.agent, name)
