"""The soak's figures and report: every count from the run's result lines, serve's metrics and the
peers' tallies, each criterion marked pass or fail, and the markdown of benchmarks/reports/soak/."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime.bundle.manifest import Manifest
from runtime.serve import Server, Settings

from . import reporting
from .soak_faults import Broker, FlakyVideo, Slowed
from .soak_measures import DRIFT_BOUND, drift


def _settings(settings: Settings) -> dict:
    """The settings that shape the soak, by flat name."""
    serve = ("max_fps", "teach", "reconnect_max_s", "sink_queue", "mqtt_queue", "explain_queue", "explain_seconds")
    picked = {k: getattr(settings.serve, k) for k in serve}
    picked.update({k: getattr(settings.detector, k) for k in ("precision", "sam_gate", "threshold")})
    return {**picked, "llm_threads": settings.agent.llm_threads}


def soak_figures(
    server: Server,
    source: FlakyVideo,
    settings: Settings,
    frames: int,
    results: Path,
    sink_peers: dict,
    broker: Broker,
    events: dict,
    samples: list,
    crashes: list,
    failures: list,
    seconds: float,
    agent: Slowed,
    explainer: str,
    sample_s: float,
) -> dict:
    lines = [json.loads(x) for x in results.read_text(encoding="utf-8").splitlines()]
    counters = server.counters()
    value = server.metrics.registry.get_sample_value
    by_label = {k: sum(x["label"] == k for x in lines) for k in ("OK", "NG", "ERROR", "TEACH", "EXPLANATION")}
    frame_lines = [x for x in lines if x["label"] != "EXPLANATION"]
    ids = [x["frame_id"] for x in frame_lines]
    written = {x["frame_id"] for x in frame_lines if x["label"] in ("OK", "NG", "ERROR")}  # what the sinks got offered
    lost = counters["captured"] - len(frame_lines) - counters["dropped"]
    sinks = {}
    for name, (spec, tally) in sink_peers.items():
        delivered = tally.ids()
        failed = int(value("lineside_sink_failures_total", {"sink": spec}) or 0)
        dropped = int(value("lineside_sink_drops_total", {"sink": spec}) or 0)
        missing = len(written - delivered)
        sinks[name] = {
            "sink": spec,
            "written": len(written),
            "delivered": len(delivered & written),
            "failed": failed,
            "dropped": dropped,
            "duplicates_received": tally.duplicates,
            "unexpected_received": tally.unexpected + len(delivered - written),
            "not_delivered": missing,
            # MQTT at QoS 1 must deliver all it did not drop at its bound; the webhook must count what it lost.
            # A POST whose answer never came back (the peer went down after reading it, or its reply was
            # late under load) is counted failed though it arrived: HTTP cannot tell the sink otherwise.
            # Those show as failed_but_arrived; lost is what went missing without being counted.
            "lost": missing - dropped if name == "mqtt" else max(0, missing - failed - dropped),
            "failed_but_arrived": 0 if name == "mqtt" else max(0, failed + dropped - missing),
        }
    outage = None
    if events.get("broker_restarted_inspected") is not None and events.get("broker_killed_inspected") is not None:
        outage = events["broker_restarted_inspected"] - events["broker_killed_inspected"]
    ng = by_label["NG"]
    explained = int(value("lineside_explanations_total") or 0)
    skipped = int(value("lineside_explanations_skipped_total") or 0)
    agent_seconds = agent.seconds
    rss = drift(samples)
    reconnects = int(value("lineside_source_reconnects_total", {"camera": ""}) or 0)
    figures = {
        "frames_in_video": frames,
        "max_fps": settings.serve.max_fps,
        "settings": _settings(settings),
        "seconds": round(seconds, 1),
        "captured": counters["captured"],
        "capture_fps": round(counters["captured"] / seconds, 2),
        "result_lines": len(frame_lines),
        "dropped_stale": counters["dropped"],
        "lost": lost,
        "duplicate_frame_lines": len(ids) - len(set(ids)),
        "labels": by_label,
        "crashes": crashes,
        "server_failure": failures,
        "faults": {
            "source_drops_injected": source.drops,
            "reconnects": reconnects,
            "corrupt_frames_injected": dict(source.corrupt),
            "webhook_outage": {
                "down_at_s": events.get("hook_down_at"),
                "up_at_s": events.get("hook_up_at"),
                "records_during": (events["hook_up_inspected"] - events["hook_down_inspected"])
                if "hook_up_inspected" in events
                else None,
            },
            "broker_restart": {
                "killed_at_s": events.get("broker_killed_at"),
                "restarted_at_s": events.get("broker_restarted_at"),
                "kills": broker.kills,
                "starts": broker.starts,
                "records_during_outage": outage,
                "first_delivery_after_restart_s": events.get("mqtt_first_delivery_after_restart_s"),
                "mqtt_queue_bound": settings.serve.mqtt_queue,
                "broker": broker.version(),
            },
        },
        "sinks": sinks,
        "explanations": {
            "explainer": explainer,
            "ng_frames": ng,
            "explanation_lines": by_label["EXPLANATION"],
            "explained_metric": explained,
            "skipped": skipped,
            "failed": max(0, ng - by_label["EXPLANATION"]),  # a skipped NG frame has its line too (origin skipped)
            "answer_s_mean": round(float(np.mean(agent_seconds)), 2) if agent_seconds else None,
            "answer_s_max": round(float(np.max(agent_seconds)), 2) if agent_seconds else None,
            "bound_s": settings.serve.explain_seconds,
        },
        "rss": {
            **rss,
            "samples_taken": len(samples),
            "every_s": sample_s,
            "start_mb": samples[0][1] if samples else None,
            "max_mb": max(r for _, r, _ in samples) if samples else None,
            "end_mb": samples[-1][1] if samples else None,
            "samples": [list(s) for s in samples[:: max(1, len(samples) // 100)]],
        },
    }
    figures["criteria"] = {
        "0 lost result lines": {"value": lost, "pass": lost == 0 and figures["duplicate_frame_lines"] == 0},
        "0 crashes": {"value": len(crashes) + len(failures), "pass": not crashes and not failures},
        "0 MQTT records lost across the broker restart (QoS 1)": {
            "value": sinks["mqtt"]["lost"],
            "pass": sinks["mqtt"]["lost"] == 0 and broker.kills >= 1 and broker.starts >= 2,
        },
        "webhook records all delivered or counted": {
            "value": sinks["webhook"]["lost"],
            "pass": sinks["webhook"]["lost"] == 0,
        },
        "RSS drift after warm-up < 5%": {
            "value": rss["drift"],
            "pass": rss["drift"] is not None and rss["drift"] < DRIFT_BOUND,
        },
    }
    return figures


def machine() -> dict:
    """`reporting.machine()` (CPU model and ISA flags, GPUs, versions) with the peers' packages too."""
    described = reporting.machine()
    for name in ("paho-mqtt", "llama_cpp_python", "prometheus_client"):
        try:
            described["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {**described, "nice": os.nice(0)}


def describe_bundle(bundle: Path) -> dict:
    manifest = Manifest.read(bundle)
    return {
        "path": str(bundle),
        "bundle_id": manifest.bundle_id,
        "profile": manifest.profile,
        "components": sorted(manifest.components),
        "built_with": manifest.versions,
        "random_weights": any(c.source.get("random_init") for c in manifest.components.values()),
    }


def _show(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def markdown(figures: dict, command: str) -> str:
    f, criteria = figures, figures["criteria"]
    m, b, rss = f["machine"], f["bundle"], f["rss"]
    verdict = "PASS" if all(x["pass"] for x in criteria.values()) else "FAIL"
    flags = ", ".join(k for k, v in m["isa"].items() if v) or "none of " + ", ".join(m["isa"])
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    nice = f"; run at niceness {m['nice']}" if m.get("nice") else ""
    out = [f"# Soak: {f['frames_in_video']} frames, faults injected: {verdict}", ""]
    out += [
        f"`{command}`: {f['seconds']:.0f} s ({f['seconds'] / 60:.1f} min) at max_fps {f['max_fps']} "
        f"(captured {f['capture_fps']} frames/s), serve in-process on a generated 320x240 MJPG video read as a "
        "live camera: frames the inspector cannot keep up with are dropped as stale, and counted.",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in f["settings"].items()) + ".",
        "",
    ]
    rows = [
        {"criterion": k, "value": v["value"], "result": "pass" if v["pass"] else "FAIL"} for k, v in criteria.items()
    ]
    out += ["## Criteria", "", reporting.table(rows, ["criterion", "value", "result"]), ""]
    keys = (
        "captured",
        "result_lines",
        "dropped_stale",
        "lost",
        "duplicate_frame_lines",
        "labels",
        "crashes",
        "server_failure",
    )
    out += [
        "## Frames",
        "",
        reporting.table([{"figure": k, "value": _show(f[k])} for k in keys], ["figure", "value"]),
        "",
        "lost = captured - result lines (OK, NG, ERROR, TEACH) - dropped as stale; crashes: exceptions that "
        "ended a thread (threading.excepthook); server_failure: `server.failure()` during and after the run.",
        "",
    ]
    rows = [{"fault": k, "what happened": _show(v)} for k, v in f["faults"].items()]
    out += ["## Faults injected", "", reporting.table(rows, ["fault", "what happened"]), ""]
    columns = [
        "sink",
        "written",
        "delivered",
        "failed",
        "dropped",
        "duplicates_received",
        "not_delivered",
        "failed_but_arrived",
        "lost",
    ]
    out += [
        "## Sinks",
        "",
        reporting.table([{**v, "sink": k} for k, v in f["sinks"].items()], columns),
        "",
        "written: OK/NG/ERROR records serve offered the sink; delivered: distinct records counted at the real "
        "peer (a paho QoS 1 subscriber with a persistent session on the broker; the webhook's HTTP server); "
        "failed, dropped: serve's lineside_sink_failures / lineside_sink_drops. MQTT lost = written - delivered "
        "- dropped at the mqtt_queue bound (at QoS 1 a failure is a loss); webhook lost = written - delivered - "
        "failed - dropped (its outage's records are re-sent; those past webhook_retries are failures, counted).",
        "",
    ]
    rows = [{"figure": k, "value": v} for k, v in f["explanations"].items()]
    out += [
        "## Explanations (slow language model)",
        "",
        reporting.table(rows, ["figure", "value"]),
        "",
        "Every NG frame gets one EXPLANATION line; those arriving while explain_queue is full get theirs at once, "
        "with origin skipped and the reason, and are counted (lineside_explanations_skipped); failed = NG frames "
        "without an EXPLANATION line.",
        "",
    ]
    drift_text = "n/a" if rss["drift"] is None else f"{rss['drift']:+.2%}"
    out += [
        "## Memory",
        "",
        f"RSS of the soak process (serve with its detector, sinks and language model; the MQTT subscriber and "
        f"webhook server), every {rss['every_s']} s, {rss['samples_taken']} samples: start {rss['start_mb']} MB, "
        f"max {rss['max_mb']} MB, end {rss['end_mb']} MB. Drift after warm-up = (mean of the last 10 % of the "
        f"samples, {rss['last_mb']} MB - mean of the samples at 10 %..20 % of the run, {rss['warm_mb']} MB) / "
        f"the latter = **{drift_text}** (bound: under 5 %).",
        "",
    ]
    every = max(1, len(rss["samples"]) // 20)
    rows = [{"t_s": t, "rss_mb": r, "captured": n} for t, r, n in rss["samples"][::every]]
    out += [reporting.table(rows, ["t_s", "rss_mb", "captured"]), ""]
    out += [
        "## Machine, bundle, versions",
        "",
        f"- CPU: {m['cpu']} ({m['arch']}, {m['cores']} cores usable{nice}); flags: {flags}; "
        f"onnxruntime {m['onnxruntime']}",
        f"- bundle {b['bundle_id']} (profile {b['profile']}; components {', '.join(b['components'])}"
        f"{'; random weights' if b['random_weights'] else ''})",
        f"- versions: python {m['python']}, {versions}; broker {f['faults']['broker_restart']['broker']}",
        "",
    ]
    return "\n".join(out)
