"""Prometheus metrics of one serve process (its own registry: no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGE_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.captured = Counter("lineside_frames_captured", "frames read from the source", registry=r)
        self.inspected = Counter("lineside_frames_inspected", "frames that got a result line", registry=r)
        self.dropped = Counter("lineside_frames_dropped", "stale live frames replaced before inspection", registry=r)
        self.reconnects = Counter(
            "lineside_source_reconnects", "reopenings of a lost live source and failed openings", registry=r
        )
        self.results = Counter("lineside_results", "results by label", ["label"], registry=r)
        self.sink_failures = Counter("lineside_sink_failures", "records a sink failed to deliver", ["sink"], registry=r)
        self.sink_drops = Counter(
            "lineside_sink_drops", "records dropped because a sink fell behind", ["sink"], registry=r
        )
        self.explained = Counter("lineside_explanations", "NG explanations written", registry=r)
        self.explain_skipped = Counter(
            "lineside_explanations_skipped", "NG frames left unexplained (queue full)", registry=r
        )
        self.stage_ms = Histogram(
            "lineside_stage_ms", "per-stage latency in milliseconds", ["stage"], buckets=STAGE_BUCKETS_MS, registry=r
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
        self.ready = Gauge("lineside_ready", "1 when the source is connected and the detector loaded", registry=r)
        for label in ("OK", "NG", "ERROR"):
            self.results.labels(label)

    def text(self) -> bytes:
        return generate_latest(self.registry)
