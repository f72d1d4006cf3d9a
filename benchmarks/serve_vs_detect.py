"""Serve against the detector alone, measured so that the comparison holds on a shared machine.

One wall-clock run per mode, minutes apart, measures the neighbours as much as serve: on a 2-core VM shared
with other jobs, serve / detect-only fps came out anywhere from 0.43 to 1.09. So trials alternate
(detect-only, serve, decode-only, detect-only, serve, ...) over the same image files, and each reports its fps
and the process's CPU time per frame (user + system of every thread, from the OS), which a busy neighbour
moves less than it moves wall time (not nothing: threads that spin while they wait for each other burn more
of it under contention). The comparison is of medians, each with its spread, and of the rounds' paired ratios.

- detect-only: `Detector.detect` on the frames decoded beforehand, one after the other on one thread.
- serve: the real `runtime.serve.Server` over the folder, results log on, started and waited for in this
  process as `python -m runtime.serve --source FOLDER` runs it (the detector built once and shared, so that
  loading it is not timed); the trial is from `start()` until every frame has its result line.
- decode-only: `read_frame` on each file (what serve's decode threads do), one after the other.

Serve's stage timeline comes from what the runtime records (the inspector's `lineside_stage_seconds` per
stage), plus the inspector's whole frame and its results-log write timed at their boundaries, so that the rows
account for the serve trial's milliseconds per frame: what the inspector did not spend on a frame it waited.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.bundle.preprocess import clip_input
from runtime.bundle.sessions import INTRA_OP_SPINNING
from runtime.detect.detector import Detector
from runtime.detect.frames import read_frame, read_image
from runtime.machine import describe
from runtime.settings import Settings

from .reporting import table

MODES = ("detect", "serve")  # alternating; decode-only runs after each pair


def cpu_seconds() -> float:
    """User + system CPU time of this whole process (every thread) so far, microsecond resolution."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spread(values: list[float]) -> dict:
    """Median, min, max and the interquartile range of one figure over the trials of a mode."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "p25": float(np.percentile(v, 25)),
        "p75": float(np.percentile(v, 75)),
        "n": len(values),
    }


def mark() -> tuple[float, float]:
    """(wall seconds, process CPU seconds) now."""
    return time.perf_counter(), cpu_seconds()


def trial(mode: str, index: int, marks: list[tuple[float, float]], **extra) -> dict:
    """A trial's figures from its marks: one before it began and one as each frame was done. fps and CPU per frame
    are of the steady part, from the first frame done to the last (serve's start-up and the pipeline's fill are
    not per-frame costs, and a short trial would spread them over its frames); `first_frame_*` is the rest."""
    (t0, c0), (t1, c1), (tn, cn) = marks[0], marks[1], marks[-1]
    steady = len(marks) - 2
    return {
        "mode": mode,
        "index": index,
        "frames": len(marks) - 1,
        "steady_frames": steady,
        "wall_s": tn - t1,
        "cpu_s": cn - c1,
        "fps": steady / (tn - t1),
        "cpu_ms_per_frame": 1e3 * (cn - c1) / steady,
        "first_frame_ms": 1e3 * (t1 - t0),
        "first_frame_cpu_ms": 1e3 * (c1 - c0),
        "whole_wall_s": tn - t0,
        "load_1min": os.getloadavg()[0],  # the machine's run queue (all its users) as the trial ended
        **extra,
    }


def detect_trial(detector: Detector, images: list[np.ndarray], memory, index: int) -> dict:
    stages: dict[str, float] = {}
    marks = [mark()]
    for image in images:
        for stage, ms in detector.detect(image, "part", memory, colour="BGR").timings_ms.items():
            stages[stage] = stages.get(stage, 0.0) + ms
        marks.append(mark())
    n, wall = len(images), marks[-1][0] - marks[0][0]
    return trial(
        "detect",
        index,
        marks,
        inspector_ms_per_frame=1e3 * wall / n,  # nothing to wait for: the next frame is in memory
        results_write_ms_per_frame=0.0,
        stage_ms_per_frame={k: v / n for k, v in stages.items()},
    )


def decode_trial(files: list[Path], index: int) -> dict:
    marks = [mark()]
    for path in files:
        read_frame(path)
        marks.append(mark())
    return trial("decode", index, marks)


class _Timed:
    """Seconds spent in one bound method of a live object, summed, and a mark as each call ended
    (instrumentation: the call itself is unchanged)."""

    def __init__(self, owner, name: str):
        self.inner, self.seconds, self.marks = getattr(owner, name), 0.0, []
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.marks.append(mark())


def stage_seconds(metrics) -> dict[str, float]:
    """The inspector's summed `lineside_stage_seconds` per stage, as the serve process recorded them."""
    out = {}
    for family in metrics.registry.collect():
        if family.name == "lineside_stage_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    out[sample.labels["stage"]] = out.get(sample.labels["stage"], 0.0) + sample.value
    return out


def serve_trial(settings: Settings, detector: Detector, index: int, frames: int) -> dict:
    from runtime.serve import Server

    server = Server(settings, detector=detector)  # the references are encoded here, before the trial
    handle, write = _Timed(server.inspector, "handle"), _Timed(server.results_log, "write_line")
    began = mark()
    try:
        server.start()
        server.wait(poll=0.005)
    finally:
        server.shutdown()
    if server.failure() or server.inspector.handled != frames:
        raise RuntimeError(
            f"serve trial {index}: {server.inspector.handled} of {frames} frames inspected ({server.failure()})"
        )
    with open(settings.serve.results, encoding="utf-8") as results:
        lines = sum(1 for _ in results)
    stages = stage_seconds(server.metrics)
    return trial(
        "serve",
        index,
        [began, *handle.marks],
        result_lines=lines,
        inspector_ms_per_frame=1e3 * handle.seconds / frames,
        results_write_ms_per_frame=1e3 * write.seconds / frames,
        stage_ms_per_frame={k: 1e3 * v / frames for k, v in stages.items()},
    )


def thread_budget(detector: Detector, settings: Settings) -> dict:
    """How many threads each part may use, and who decided it. Nothing in the runtime derives them from the
    core count: intra-op threads are the `threads` setting or, unset, onnxruntime's own default (counted here
    from the threads a fresh session of the image graph starts), decode threads the `decode_threads` setting."""
    return {
        "cores": describe()["cores"],
        "intra_op_threads_setting": settings.detector.threads,
        "intra_op_threads_observed": _ort_threads(detector),
        "decode_threads": settings.serve.decode_threads,
        "opencv_threads": cv2.getNumThreads(),
        "intra_op_spinning": INTRA_OP_SPINNING == "1",
        "decided_from_core_count": False,
    }


def _ort_threads(detector: Detector) -> int | None:
    """The intra-op pool of an onnxruntime session left to its default: the threads it starts, plus the caller's
    (None where /proc/self/task cannot be read)."""
    import onnxruntime as ort

    task = Path("/proc/self/task")
    if not task.is_dir():
        return None
    before = len(list(task.iterdir()))
    session = ort.InferenceSession(str(detector.encoder.session.path), providers=["CPUExecutionProvider"])
    started = len(list(task.iterdir())) - before
    del session
    return started + 1


def write_frames(folder: Path, images: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        cv2.imwrite(str(path), image)
    return paths


def compare(
    bundle: Path,
    images: list[np.ndarray],
    refs: list[np.ndarray] | None,
    trials: int = 5,
    precision: str = "fp32",
    providers: tuple[str, ...] = ("cpu",),
    allow: bool = False,
) -> dict:
    """`trials` rounds of detect-only, serve and decode-only over `images` (BGR, written as PNG files), OK frames
    only (SAM gated off, threshold 1: no explanations), and the summary of each mode."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = write_frames(work / "frames", images)
        refs_dir = None
        if refs:
            refs_dir = work / "refs"
            write_frames(refs_dir, refs)
        detector = Detector.from_bundle(
            bundle,
            precision=precision,
            providers=providers,
            sam_gate=1.0,
            threshold=1.0,
            text_cache_dir=work / "text",
            allow_unverified_precision=allow,
        )
        memory = detector.remember([read_image(p) for p in sorted(refs_dir.iterdir())], "RGB") if refs_dir else None
        decoded = [read_frame(p) for p in files]  # what serve's source hands the inspector: BGR as decoded
        detector.detect(decoded[0], "part", memory, colour="BGR")  # warm: arenas, text embeddings

        def settings_for(i: int) -> Settings:
            return Settings.of(
                source=str(work / "frames"),
                bundle=bundle,
                category="part",
                port=0,
                precision=precision,
                providers=tuple(providers),
                results=work / f"results-{i}.jsonl",
                explain=False,
                references=refs_dir,
                threshold=1.0,
                sam_gate=1.0,
            )

        runs = []
        for i in range(trials):
            runs.append(detect_trial(detector, decoded, memory, i))
            runs.append(serve_trial(settings_for(i), detector, i, len(files)))
            runs.append(decode_trial(files, i))
        preprocess_ms = _preprocess_ms(detector, decoded)
        budget = thread_budget(detector, settings_for(0))
    return summarise(runs, preprocess_ms, budget, precision, list(detector.providers))


def _preprocess_ms(detector: Detector, images: list[np.ndarray]) -> float:
    """Median wall ms of the image encoder's preprocessing alone (it runs inside the `image_encoder` stage)."""
    times = []
    for image in images:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        t = time.perf_counter()
        clip_input(rgb, detector.encoder.preprocessing)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def summarise(runs: list[dict], preprocess_ms: float, budget: dict, precision: str, providers: list[str]) -> dict:
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in ("detect", "serve", "decode")}
    modes = {
        m: {"fps": spread([r["fps"] for r in rs]), "cpu_ms_per_frame": spread([r["cpu_ms_per_frame"] for r in rs])}
        for m, rs in by_mode.items()
    }
    detect, serve, decode = (modes[m] for m in ("detect", "serve", "decode"))
    expected_cpu = detect["cpu_ms_per_frame"]["median"] + decode["cpu_ms_per_frame"]["median"]
    paired = [s["fps"] / d["fps"] for d, s in zip(by_mode["detect"], by_mode["serve"])]
    return {
        "precision": precision,
        "providers": providers,
        "frames_per_trial": runs[0]["frames"],
        "trials_per_mode": len(by_mode["serve"]),
        "order": [r["mode"] for r in runs],
        "trials": runs,
        "modes": modes,
        "headline": {
            "fps_ratio": serve["fps"]["median"] / detect["fps"]["median"],
            "fps_ratio_paired": spread(paired),
            "serve_cpu_ms_per_frame": serve["cpu_ms_per_frame"]["median"],
            "detect_plus_decode_cpu_ms_per_frame": expected_cpu,
            "cpu_ratio": serve["cpu_ms_per_frame"]["median"] / expected_cpu,
            # what the cores allow: a mode cannot run faster than cores / its CPU per frame
            "cpu_bound_fps": {m: budget["cores"] * 1e3 / modes[m]["cpu_ms_per_frame"]["median"] for m in MODES},
        },
        "targets": {"fps_ratio_at_least": 0.9, "cpu_ratio_at_most": 1.10},
        "load_1min": spread([r["load_1min"] for r in runs]),
        "first_frame_ms": {m: spread([r["first_frame_ms"] for r in rs]) for m, rs in by_mode.items()},
        "first_frame_cpu_ms": {m: spread([r["first_frame_cpu_ms"] for r in rs]) for m, rs in by_mode.items()},
        "timeline_ms_per_frame": {m: timeline(by_mode[m], preprocess_ms) for m in ("serve", "detect")},
        "decode_ms_per_frame": 1e3 / decode["fps"]["median"],  # on one thread, decode-only
        "threads": budget,
    }


def timeline(runs: list[dict], preprocess_ms: float) -> dict:
    """Where a frame's milliseconds go in the median trial (by fps) of a mode: the detector's stages as the
    runtime recorded them, the results-log write, the rest of the frame, and the time serve's inspector waited
    for a frame; these rows sum to the trial's wall ms per frame. Serve decodes beside them, on its threads."""
    median_fps = statistics.median_low([r["fps"] for r in runs])
    run = next(r for r in runs if r["fps"] == median_fps)
    stages = run["stage_ms_per_frame"]
    wall = 1e3 * run["whole_wall_s"] / run["frames"]  # the whole trial, start-up included, as the stages are
    detect_total = stages.get("total", 0.0)
    encoder = stages.get("image_encoder", 0.0)
    scoring = {f"scoring: {k}": v for k, v in stages.items() if k not in ("total", "image_encoder", "explanation")}
    rows = {
        "preprocess": min(preprocess_ms, encoder),
        "encoder": encoder - min(preprocess_ms, encoder),
        **scoring,
        "detect, between its timed stages": detect_total - encoder - sum(scoring.values()),
        "results write": run["results_write_ms_per_frame"],
        "rest of the frame (colour, result line and its audit hash, page, sinks)": run["inspector_ms_per_frame"]
        - detect_total
        - run["results_write_ms_per_frame"],
        "waiting for a frame": wall - run["inspector_ms_per_frame"],
    }
    return {
        "trial": run["index"],
        "wall_ms_per_frame": wall,
        "rows": rows,
        "accounted_ms_per_frame": sum(rows.values()),
    }


def markdown(c: dict) -> list[str]:
    """The section of the latency report: the headline against its targets, each mode's spread, the timeline."""
    h, t = c["headline"], c["targets"]
    fps_ok = "meets" if h["fps_ratio"] >= t["fps_ratio_at_least"] else "misses"
    cpu_ok = "meets" if h["cpu_ratio"] <= t["cpu_ratio_at_most"] else "misses"
    rows = []
    for mode, figures in c["modes"].items():
        for name, s in figures.items():
            rows.append({"mode": mode, "figure": name, **{k: s[k] for k in ("median", "min", "max", "p25", "p75")}})
    p = h["fps_ratio_paired"]
    b, bound = c["threads"], h["cpu_bound_fps"]
    detect, serve = c["modes"]["detect"], c["modes"]["serve"]
    lines = [
        f"## Serve against the detector ({c['precision']}, {', '.join(c['providers'])})",
        "",
        f"{c['trials_per_mode']} trials per mode of {c['frames_per_trial']} frames each, interleaved in rounds "
        "(detect-only, serve, decode-only; then again), the same PNG files each trial, OK frames (SAM gated off). "
        "fps and CPU per frame are of each trial's steady part, from its first frame done to its last: serve's "
        f"start to its first result line (median {c['first_frame_ms']['serve']['median']:.0f} ms, "
        f"{c['first_frame_cpu_ms']['serve']['median']:.0f} ms CPU; detect-only's first frame "
        f"{c['first_frame_ms']['detect']['median']:.0f} ms) is start-up, not a per-frame cost. "
        "The machine is shared with other jobs, so one wall-clock run per mode would measure them too: hence the interleaving, "
        "the medians with their spread, and CPU time per frame "
        "(user + system of the whole process over the trial, from getrusage). CPU time is less sensitive to "
        "neighbours than wall time, not immune: threads that spin while they wait for each other (numpy's BLAS) "
        "burn more of it when a neighbour takes their core. The machine's 1-minute load average over the trials: "
        f"{c['load_1min']['min']:.1f}-{c['load_1min']['max']:.1f} (median {c['load_1min']['median']:.1f}) "
        f"on {c['threads']['cores']} cores.",
        "",
        f"- **serve / detect-only fps: {h['fps_ratio']:.2f}** (medians; paired per round: median "
        f"{p['median']:.2f}, {p['min']:.2f}-{p['max']:.2f}); target >= {t['fps_ratio_at_least']}: {fps_ok} it.",
        f"- **serve CPU per frame: {h['serve_cpu_ms_per_frame']:.1f} ms against detect-only + decoding "
        f"{h['detect_plus_decode_cpu_ms_per_frame']:.1f} ms = {h['cpu_ratio']:.3f}x**; target within 10% "
        f"(<= {t['cpu_ratio_at_most']:.2f}x): {cpu_ok} it.",
        f"- The cores' bound: {b['cores']} cores / CPU per frame caps detect-only at {bound['detect']:.1f} fps "
        f"(median measured {detect['fps']['median']:.1f}) and serve at {bound['serve']:.1f} "
        f"(measured {serve['fps']['median']:.1f}): {bound['serve'] / bound['detect']:.2f}x. Where detect-only "
        "already keeps every core busy, serve's decoding and per-frame extras take core time from inference "
        "instead of idle time, and its fps ratio cannot pass this.",
        "",
        table(rows, ["mode", "figure", "median", "min", "max", "p25", "p75"]),
        "",
    ]
    serve_tl, detect_tl = c["timeline_ms_per_frame"]["serve"], c["timeline_ms_per_frame"]["detect"]
    trows = [
        {"stage": k, "serve": v, "detect-only": detect_tl["rows"].get(k, 0.0)} for k, v in serve_tl["rows"].items()
    ]
    trows.append(
        {
            "stage": "sum (the trial's wall ms per frame)",
            "serve": serve_tl["accounted_ms_per_frame"],
            "detect-only": detect_tl["accounted_ms_per_frame"],
        }
    )
    lines += [
        "Stage timeline, ms per frame (the median trial of each mode): the detector's stages as serve records "
        "them (lineside_stage_seconds; detect-only: the same `Result.timings_ms`), preprocessing timed apart "
        "and taken out of the encoder's stage, the results-log write and serve's whole inspection of a frame "
        "timed at their calls, the rest of serve's wall time its inspector waiting for a frame. Serve decodes "
        f"beside these on its decode threads ({c['decode_ms_per_frame']:.1f} ms per frame on one thread, "
        "decode-only median).",
        "",
        table(trows, ["stage", "serve", "detect-only"]),
        "",
        f"Thread budget: {b['cores']} cores; onnxruntime intra-op threads: setting "
        f"{b['intra_op_threads_setting'] if b['intra_op_threads_setting'] else 'unset'}, so onnxruntime's "
        f"default, {b['intra_op_threads_observed']} (counted from the threads a fresh session starts, plus "
        f"the caller's), {'spinning' if b['intra_op_spinning'] else 'not spinning'} between runs; "
        f"decode threads {b['decode_threads']} (the decode_threads setting); OpenCV "
        f"{b['opencv_threads']}. Nothing in the runtime chooses these from the core count.",
        "",
    ]
    return lines
