"""Wires a serve process together: per camera source -> slot -> inspector -> log + sinks + explainer, and HTTP.

Everything that can be wrong with the settings (a bad sink, a missing file, a
source that can never deliver, a bundle that cannot run as asked or that
`runtime.check` would refuse, a bad cameras file) fails in the constructor,
before any thread starts. A camera whose worker
dies (its inspector, its capture thread) is stopped and reported while the
others go on; when none is left, or the results log cannot be written, serve
stops: `failure()` says why, /healthz answers 503 with it and the command exits
non-zero (as it does, at its end, when any camera failed). `shutdown()` drains: every
frame captured from a recording is inspected and logged, sinks deliver what
they hold, the results log is flushed and synced.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from ..check import start_check
from ..detect.detector import Detector
from ..settings import AgentSettings, Settings
from .cameras import Camera, CameraSpec, Serialised, read_cameras
from .frames.sources import open_source
from .frames.triggers import parse_mqtt_url
from .interfaces.metrics import Metrics
from .interfaces.web import WebThread, create_app, loopback
from .judging.explainer import Explainer
from .process import logs
from .results.ngstore import NgImageSink
from .results.records import ResultsLog
from .results.sinks import parse_sink

log = logging.getLogger("lineside.serve")


def build_agent(detector: Detector, settings: AgentSettings):
    """The prompt agent for explanations: with the bundle's language model if it can run, else rules."""
    from ..prompts.agent import PromptAgent

    llm = None
    if detector.bundle.by_role("language_model") is not None:
        try:
            from ..prompts.language_model import LanguageModel

            llm = LanguageModel(detector.bundle, threads=settings.llm_threads, n_ctx=settings.llm_context)
        except RuntimeError as e:
            log.warning("explanations from rules only: %s", e)
    return PromptAgent(detector, llm, settings)


def refuse_open_listener(host: str, specs: list[CameraSpec]) -> None:
    """Beyond loopback, every camera needs an api_token: without one its feedback, teaching and triggers would
    take the word of anyone on the network (ValueError saying how to set one)."""
    if loopback(host):
        return
    open_ = [spec.id for spec in specs if not spec.settings.serve.api_token]
    if open_:
        which = f" (camera {', '.join(open_)})" if any(open_) else ""
        raise ValueError(
            f"setting host: {host} reaches beyond this box and api_token is empty{which}, so anyone there could "
            "post feedback, teach and trigger; set one (LINESIDE_API_TOKEN=$(openssl rand -hex 24), or "
            "--api-token) or listen on 127.0.0.1"
        )


class Server:
    """One process: one detector shared by its cameras (one, or those of --cameras FILE), one HTTP server.

    `cameras` maps each id to its `Camera`; `state`, `triggers`, `inspector`, `capture` ... are the first
    camera's, for a process that serves one.
    """

    def __init__(self, settings: Settings, detector: Detector | None = None, agent=None, source=None):
        logs.install()
        self.settings, s = settings, settings.serve
        specs = read_cameras(s.cameras, settings) if s.cameras else [CameraSpec(s.camera_id, settings, {})]
        if source is not None and len(specs) > 1:
            raise ValueError("a source object serves one camera; give each camera its source in the cameras file")
        refuse_open_listener(s.host, specs)
        self.metrics, self.stop = Metrics(), threading.Event()
        self._sinks: dict[str, object] = {}  # spec -> sink, shared by the cameras that name it
        self._logs: dict[Path, ResultsLog] = {}  # path -> log, shared by the cameras that write to it
        # Refused before the bundle is loaded: bad sinks and trigger topics, then sources that can never deliver.
        sinks = [self._sinks_of(spec) for spec in specs]
        for spec in specs:
            if spec.settings.serve.trigger_mqtt:
                parse_mqtt_url(spec.settings.serve.trigger_mqtt)
        sources = [source or self._open(spec.settings) for spec in specs]
        if len(specs) > 1 and settings.detector.cuda_graph:
            raise ValueError(
                "setting cuda_graph: a captured graph keeps SAM's image embeddings in one fixed device buffer, "
                "which the cameras' inspectors would overwrite for each other; leave it off with a cameras file"
            )
        if detector is None:  # built here from the bundle: proved as runtime.check proves it, before any thread
            detector = Detector.from_bundle(settings.job.bundle, settings.detector)
            start_check(detector, settings.job.category)
        self.detector = detector
        self.metrics.running(self.detector.bundle_id)
        self.agent = None
        if any(spec.settings.serve.explain for spec in specs):
            self.agent = agent or build_agent(self.detector, settings.agent)
            self.agent = Serialised(self.agent) if len(specs) > 1 else self.agent
        self.cameras: dict[str, Camera] = {}
        self._conditions: dict[str, tuple] = {}  # camera -> the condition its sinks were last told (MQTT status)
        for spec, src, its_sinks in zip(specs, sources, sinks):
            try:
                detector_ = spec.detector_for(self.detector)
                camera = Camera(spec, src, detector_, self.metrics, self._log(spec), its_sinks, self._explainer)
            except (ValueError, OSError) as e:
                if not s.cameras:
                    raise
                raise ValueError(f"camera {spec.id}: {e}") from e
            self.cameras[spec.id] = camera
            self._attach(camera)
        first = next(iter(self.cameras.values()))
        self.state, self.triggers, self.trigger_topic = first.state, first.triggers, first.trigger_topic
        self.source, self.slot, self.capture, self.inspector = first.source, first.slot, first.capture, first.inspector
        self.explainer, self.sinks, self.results_log = first.explainer, first.sinks, first.results_log
        self.web = WebThread(
            create_app(self), s.host, s.port, s.http_max_connections, s.http_read_timeout_s, self.metrics.http_refused
        )

    @staticmethod
    def _open(settings: Settings):
        """A camera's source, refused at once when it can never deliver (before the bundle is loaded)."""
        s = settings.serve
        source = open_source(s.source, settings.detector.max_image_pixels, s.decode_threads, camera=s)
        source.probe()
        return source

    def _log(self, spec: CameraSpec) -> ResultsLog:
        path = Path(spec.settings.serve.results).absolute()
        if path not in self._logs:
            self._logs[path] = ResultsLog(spec.settings.serve.results)
        return self._logs[path]

    @staticmethod
    def _attach(camera: Camera) -> None:
        """A PLC handshake among the camera's sinks takes its triggers (with trigger=software) and presents
        its results until the PLC acknowledges each (handshake.py)."""
        s, queue = camera.settings.serve, camera.triggers
        submit = (lambda part: queue.offer(None, "plc", part).id) if queue is not None else None
        select = camera.inspector.select_recipe if camera.inspector.recipes else None
        for sink in camera.sinks:
            if hasattr(sink, "attach"):
                sink.attach(camera.id or "0", submit, s.plc_results, s.plc_timeout_s, select)

    def _sinks_of(self, spec: CameraSpec) -> list:
        """The camera's sinks; cameras naming the same sink (or NG folder) share one."""
        s = spec.settings.serve
        out = []
        for key in s.sink:
            if key not in self._sinks:
                self._sinks[key] = parse_sink(key, self.metrics, s.sink_queue, serve=s)
            out.append(self._sinks[key])
        if s.save_ng:
            key = f"ng:{Path(s.save_ng).absolute()}"
            if key not in self._sinks:
                self._sinks[key] = NgImageSink(s.save_ng, s.save_ng_mb, self.metrics, s.sink_queue)
            out.append(self._sinks[key])
        return out

    def _explainer(self, camera: Camera) -> Explainer:
        s = camera.settings.serve
        return Explainer(
            self.agent,
            camera.results_log,
            camera.state,
            camera.metrics,
            s.explain_queue,
            s.explain_seconds,
            sinks=camera.sinks,
        )

    def _named(self, camera: Camera, problem: str) -> str:
        return f"camera {camera.id}: {problem}" if camera.id else problem

    def failure(self) -> str | None:
        """Why serve is dying: every camera has stopped on a failure (its worker died, its results log broke)."""
        problems = [(c, c.failure()) for c in self.cameras.values()]
        if all(problem for _, problem in problems):
            return "; ".join(self._named(c, p) for c, p in problems)
        return None

    def problems(self) -> list[str]:
        """Every camera that stopped on a failure, and why (the process may still serve the others)."""
        return [self._named(c, p) for c in self.cameras.values() if (p := c.failure())]

    def health(self) -> tuple[bool, str]:
        """Whether serve does its job: not while every camera has stopped or stalled for longer than
        health_stall_s (a source lost or sending nothing, an inspector hung, a trigger left waiting), nor while
        a sink holds records it has not taken for that long. A supervisor restarts an unhealthy process; a
        camera merely not connected yet, within the bound, is /readyz's business."""
        problem = self.failure()
        if problem:
            return False, problem
        bound = self.settings.serve.health_stall_s
        stuck = [p for sink in self._sinks.values() if (p := getattr(sink, "stuck", lambda _: None)(bound))]
        problems = [(c, c.failure() or c.stalled()) for c in self.cameras.values()]
        if all(p for _, p in problems):
            stuck = [self._named(c, p) for c, p in problems] + stuck
        return not stuck, "; ".join(stuck)

    def ready(self) -> tuple[bool, str]:
        """Every camera connected and inspecting, every graph's Triton server answering; otherwise what is not, and why."""
        problem = self.failure()
        if problem:
            return False, problem
        failing = [
            f"graph {n} on {g['server']['url']} failing: {g['server']['error']}"
            for n, g in self.graphs().items()
            if g.get("server", {}).get("state") == "failing"
        ]  # a Triton server that does not answer
        waiting = [(c, r[1]) for c in self.cameras.values() if not (r := c.ready())[0]]
        problems = [*failing, *(self._named(c, p) for c, p in waiting)]
        return not problems, "; ".join(problems)

    def graphs(self) -> dict[str, dict]:
        """Each graph the detector runs: its precision and the providers it runs on now (and those asked for)."""
        return self.detector.graphs()

    def counters(self) -> dict:
        """Frames and results of all cameras together."""
        each = [c.counters() for c in self.cameras.values()]
        return {name: sum(c[name] for c in each) for name in each[0]}

    def start(self) -> Server:
        s = self.settings.serve
        self.web.start()
        self.web.started.wait(10)
        if self.web.error is not None:
            raise OSError(f"cannot serve HTTP on {s.host}:{s.port}: {self.web.error}")
        for sink in self._sinks.values():
            sink.start()
        for camera in self.cameras.values():
            camera.start()
        self._refuse_missing_sources()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        sources = ", ".join(f"{c.id or 'camera'} {c.source.spec}" for c in self.cameras.values())
        log.info("serving %s on http://%s:%d", sources, s.host, self.web.port)
        return self

    def _refuse_missing_sources(self) -> None:
        """With wait_for_source off, a live source that cannot be opened at start refuses serve (OSError)."""
        for camera in self.cameras.values():
            s, capture = camera.settings.serve, camera.capture
            if s.wait_for_source or not camera.source.live:
                continue
            capture.tried.wait(max(30.0, s.health_stall_s))
            if capture.frames == 0 and not capture.connected.is_set():
                problem = re.sub(r"; retrying in [\d.]+s$", "", capture.problem or "not opened in time")
                raise OSError(
                    f"{self._named(camera, f'source {camera.source.spec!r} cannot be opened')}: {problem}; check "
                    "the camera index, device or URL, or set wait_for_source to wait for it"
                )

    def _tell(self, camera: Camera) -> None:
        """The camera's sinks that publish its availability (MQTT status) hear of each change of condition."""
        state, why = camera.condition()
        key = (state, re.sub(r"\d", "", why))  # "away for 61 s" and "62 s" are one condition
        if not state or self._conditions.get(camera.id) == key:
            return
        self._conditions[camera.id] = key
        for sink in camera.sinks:
            if hasattr(sink, "camera_condition"):
                sink.camera_condition(camera.id, state, why)

    def _watch(self) -> None:
        """Keeps the ready gauges current, stops a camera whose worker died, and serve when none is left."""
        while not self.stop.is_set():
            for camera in self.cameras.values():
                problem = camera.failure()
                if problem and not camera.stop.is_set():
                    log.error("stopping %s", self._named(camera, problem))
                    camera.stop.set()
                camera.metrics.ready.set(1 if camera.ready()[0] else 0)
                self._tell(camera)
            problem = self.failure()
            if problem:
                log.error("stopping serve: %s", problem)
                self.stop.set()
            self.stop.wait(0.2)

    def finished(self) -> bool:
        """Every camera's recording (file or folder, no --loop) read and inspected, or the camera stopped."""
        return all(c.finished() for c in self.cameras.values())

    def wait(self, poll: float = 0.1) -> None:
        while not self.stop.is_set() and not self.finished():
            time.sleep(poll)

    def shutdown(self) -> None:
        """Stop and drain; safe to call when start() failed half-way (threads never started are skipped)."""
        self.stop.set()
        for camera in self.cameras.values():
            camera.stop.set()
        for camera in self.cameras.values():
            camera.halt()
        for sink in self._sinks.values():
            sink.close()
        for log_ in self._logs.values():
            log_.close()
        for camera in self.cameras.values():
            camera.metrics.ready.set(0)
        self.web.close()
        for camera in self.cameras.values():
            camera.source.close()
