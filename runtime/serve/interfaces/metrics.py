"""Prometheus metrics of one serve process (its own registry: no module globals), in base units.

Durations are in seconds and sizes in bytes, as Prometheus expects. What is
about one camera (frames, results, stage times, reconnects, readiness) carries
a `camera` label: `Metrics.camera(id)` gives a view bound to that label, so a
camera's capture and inspector count with `metrics.captured.inc()` as if they
were alone. One unnamed camera is `camera=""`, which PromQL reads as no label.
`lineside_build_info` names the version and the bundle the process runs.
"""

from __future__ import annotations

import importlib.metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

STAGE_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LABELS = ("OK", "NG", "ERROR")


def version() -> str:
    """lineside's installed version; "unknown" when run from a tree that was never installed."""
    try:
        return importlib.metadata.version("lineside")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self, bundle_id: str = ""):
        r = self.registry = CollectorRegistry()
        cam = ["camera"]
        self.captured = Counter("lineside_frames_captured", "frames read from the source", cam, registry=r)
        self.inspected = Counter("lineside_frames_inspected", "frames that got a result line", cam, registry=r)
        self.dropped = Counter(
            "lineside_frames_dropped",
            "live frames never inspected: stale ones replaced, incomplete ones a free-running camera sent",
            cam,
            registry=r,
        )
        self.incomplete = Counter(
            "lineside_frames_incomplete",
            "frames the camera sent incomplete (GigE packets lost): skipped when free-running, ERROR lines when "
            "triggered",
            cam,
            registry=r,
        )
        self.reconnects = Counter(
            "lineside_source_reconnects", "reopenings of a lost live source and failed openings", cam, registry=r
        )
        self.results = Counter("lineside_results", "results by label", [*cam, "label"], registry=r)
        self.stage_seconds = Histogram(
            "lineside_stage_seconds",
            "time of each stage of one inspection, in seconds",
            [*cam, "stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.ready = Gauge("lineside_ready", "1 when the camera's source is connected and it inspects", cam, registry=r)
        self.since_inspection = Gauge(
            "lineside_since_last_inspection_seconds",
            "seconds since the camera's inspector last handled a frame (or began), read when scraped",
            cam,
            registry=r,
        )
        self.sink_failures = Counter("lineside_sink_failures", "records a sink failed to deliver", ["sink"], registry=r)
        self.sink_drops = Counter(
            "lineside_sink_drops", "records dropped because a sink fell behind", ["sink"], registry=r
        )
        self.explained = Counter("lineside_explanations", "NG explanations written", registry=r)
        self.explain_skipped = Counter(
            "lineside_explanations_skipped", "NG frames left unexplained (queue full)", registry=r
        )
        self.http_refused = Counter(
            "lineside_http_refused", "HTTP connections refused at http_max_connections", registry=r
        )
        self.triggers = Counter(
            "lineside_triggers",
            "triggers by outcome: accepted, refused (queue full or "
            "malformed), inspected, unserved (serve stopped first)",
            ["outcome"],
            registry=r,
        )
        self.triggers_waiting = Gauge("lineside_triggers_waiting", "triggers queued for the inspector", registry=r)
        self.build = Info("lineside_build", "the lineside version and the bundle this process runs", registry=r)
        self.build.info({"version": version(), "bundle_id": bundle_id})

    def running(self, bundle_id: str) -> None:
        """The bundle is loaded: lineside_build_info names it."""
        self.build.info({"version": version(), "bundle_id": bundle_id})

    def camera(self, camera: str) -> CameraMetrics:
        return CameraMetrics(self, camera)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class CameraMetrics:
    """`metrics` seen from one camera: its labelled metrics bound to it, the process's others as they are."""

    def __init__(self, metrics: Metrics, camera: str):
        self.parent, self.name = metrics, camera
        for name in ("captured", "inspected", "dropped", "incomplete", "reconnects", "ready", "since_inspection"):
            setattr(self, name, getattr(metrics, name).labels(camera))
        self.results = _Bound(metrics.results, camera)
        self.stage_seconds = _Bound(metrics.stage_seconds, camera)
        for label in LABELS:
            self.results.labels(label)

    def __getattr__(self, name: str):
        return getattr(self.parent, name)

    def count(self, name: str, **labels) -> int:
        """A counter's value for this camera (0 before it was counted), e.g. count("results", label="NG")."""
        sample = {f: f"frames_{f}" for f in ("captured", "inspected", "dropped", "incomplete")}
        metric = f"lineside_{sample.get(name, name)}_total"
        return int(self.parent.registry.get_sample_value(metric, {"camera": self.name, **labels}) or 0)


class _Bound:
    """A labelled metric with its first label (the camera) already given: `.labels(stage)`."""

    def __init__(self, metric, camera: str):
        self.metric, self.camera = metric, camera

    def labels(self, *values: str):
        return self.metric.labels(self.camera, *values)
