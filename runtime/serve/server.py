"""Wires a serve process together: source -> slot -> inspector -> log + sinks + explainer, and HTTP.

Everything that can be wrong with the settings (a bad sink, a missing file, a
source that can never deliver, a bundle that cannot run as asked) fails in the
constructor, before any thread starts. A worker that dies (the inspector, the
capture thread, the results log) stops serve: `failure()` says why, /healthz
answers 503 with it and the command exits non-zero. `shutdown()` drains: every
frame captured from a recording is inspected and logged, sinks deliver what
they hold, the results log is flushed and synced.
"""

from __future__ import annotations

import logging
import threading
import time

from ..detect.detector import Detector
from ..detect.frames import list_images, read_image
from ..settings import AgentSettings, Settings
from . import logs
from .capture import Capture, LatestFrameSlot
from .explainer import Explainer
from .metrics import Metrics
from .ngstore import NgImageSink
from .pipeline import Inspector
from .records import ResultsLog
from .sinks import parse_sink
from .sources import open_source
from .state import State
from .teaching import Operating
from .triggers import MqttTriggers, TriggerQueue
from .web import WebThread, create_app

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


class Server:
    def __init__(self, settings: Settings, detector: Detector | None = None, agent=None, source=None):
        logs.install()
        self.settings, s, job = settings, settings.serve, settings.job
        max_pixels = settings.detector.max_image_pixels
        self.metrics, self.state, self.stop = Metrics(), State(s.recent), threading.Event()
        self.source = source or open_source(s.source, max_pixels, s.decode_threads, camera=s)
        self.sinks = [
            parse_sink(spec, self.metrics, s.sink_queue, s.mqtt_queue, s.webhook_follow_redirects) for spec in s.sink
        ]
        if s.save_ng:
            self.sinks.append(NgImageSink(s.save_ng, s.save_ng_mb, self.metrics, s.sink_queue))
        software = s.trigger == "software"
        self.triggers = TriggerQueue(s.trigger_queue, self.metrics, self.source.fire) if software else None
        self.trigger_topic = MqttTriggers(s.trigger_mqtt, self.triggers) if s.trigger_mqtt else None
        if source is None:
            self.source.probe()
        self.detector = detector or Detector.from_bundle(job.bundle, settings.detector)
        references = [read_image(p, max_pixels) for p in list_images([job.references])] if job.references else None
        if not self.detector.has_language and not references and s.teach == 0:
            raise ValueError(f"bundle {job.bundle} has no language branch: give --references DIR or --teach N")
        good = [read_image(p, max_pixels) for p in list_images([job.calibrate])] if job.calibrate else None
        operating = Operating(good, job.calibrate, job.false_alarm_target, s.calibrate_teach, s.teach)
        self.results_log = ResultsLog(s.results)
        self.slot = LatestFrameSlot()
        self.explainer = (
            Explainer(
                agent or build_agent(self.detector, settings.agent),
                self.results_log,
                self.state,
                self.metrics,
                s.explain_queue,
                s.explain_seconds,
            )
            if s.explain
            else None
        )
        self.capture = Capture(self.source, self.slot, self.stop, self.metrics, s.max_fps, s.loop, s.reconnect_max_s)
        self.inspector = Inspector(
            self.detector,
            job.category,
            references,
            self.slot,
            self.results_log,
            self.state,
            self.sinks,
            self.explainer,
            self.metrics,
            self.stop,
            s.teach,
            screen=s.teach_screen,
            operating=operating,
            capture_done=self._capture_done,
            triggers=self.triggers,
            live=self.source.live,
        )
        self.web = WebThread(
            create_app(self), s.host, s.port, s.http_max_connections, s.http_read_timeout_s, self.metrics.http_refused
        )

    def _capture_done(self) -> bool:
        """No frame can still come: capture has ended (or never started), or the source is live (no waiting)."""
        return self.source.live or self.capture.finished.is_set() or self.capture.ident is None

    def failure(self) -> str | None:
        """Why serve is dying, if a worker died or the results log broke; None while all is well."""
        for problem in (self.results_log.failure, self.inspector.failure, self.capture.failure):
            if problem:
                return problem
        if self.inspector.ident is not None and not self.inspector.is_alive() and not self.stop.is_set():
            return "inspector stopped"
        return None

    def health(self) -> tuple[bool, str]:
        """Alive and able to inspect (not: connected to a camera, which is /readyz)."""
        problem = self.failure()
        return problem is None, problem or ""

    def ready(self) -> tuple[bool, str]:
        problem = self.failure()
        if problem:
            return False, problem
        if not self.capture.connected.is_set():
            return False, self.capture.problem or "source not connected"
        if not self.inspector.is_alive():
            return False, "inspector stopped"
        return True, ""

    def graphs(self) -> dict[str, dict]:
        """Each graph the detector runs: its precision and the providers it runs on now (and those asked for)."""
        return self.detector.graphs()

    def counters(self) -> dict:
        value = self.metrics.registry.get_sample_value
        out = {name: int(value(f"lineside_frames_{name}_total") or 0) for name in ("captured", "inspected", "dropped")}
        for label in ("OK", "NG", "ERROR"):
            out[label.lower()] = int(value("lineside_results_total", {"label": label}) or 0)
        return out

    def start(self) -> Server:
        s = self.settings.serve
        self.web.start()
        self.web.started.wait(10)
        if self.web.error is not None:
            raise OSError(f"cannot serve HTTP on {s.host}:{s.port}: {self.web.error}")
        for sink in self.sinks:
            sink.start()
        if self.explainer is not None:
            self.explainer.start()
        self.inspector.start()
        self.capture.start()
        if self.trigger_topic is not None:
            self.trigger_topic.start()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        log.info("serving %s on http://%s:%d", s.source, s.host, self.web.port)
        return self

    def _watch(self) -> None:
        """Keeps the ready gauge current and stops serve when a worker died."""
        while not self.stop.is_set():
            problem = self.failure()
            if problem:
                log.error("stopping serve: %s", problem)
                self.stop.set()
            self.metrics.ready.set(1 if self.ready()[0] else 0)
            self.stop.wait(0.5)

    def finished(self) -> bool:
        """A recording (file or folder, no --loop) has been read and every frame inspected."""
        return self.capture.finished.is_set() and self.inspector.handled >= self.capture.frames

    def wait(self, poll: float = 0.1) -> None:
        while not self.stop.is_set() and not self.finished():
            time.sleep(poll)

    def shutdown(self) -> None:
        """Stop and drain; safe to call when start() failed half-way (threads never started are skipped)."""
        self.stop.set()
        if self.trigger_topic is not None:
            self.trigger_topic.close()
        if self.capture.ident is not None:
            self.capture.join(5)
        if self.inspector.ident is not None:
            self.inspector.done.wait(30)
        if self.explainer is not None:
            self.explainer.close()
        for sink in self.sinks:
            sink.close()
        self.results_log.close()
        self.metrics.ready.set(0)
        self.web.close()
        self.source.close()
