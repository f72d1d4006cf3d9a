"""python -m benchmarks.latency --bundle DIR [--precisions fp32,int8] [--providers cpu] [--trials 5]

Per-stage p50/p90/p99 of the detector on OK frames (CLIP only) and on suspicious
frames (SAM runs), cold start apart from warm, sequential throughput, peak RSS,
the image graph's GFLOPs against a matmul peak measured in the same run, and,
side by side, torch eager on the same architecture and resolution (when the
export extra is installed). Serve against the detector alone is measured in
interleaved trials with CPU time per frame (serve_vs_detect.py), which is what
holds on a shared machine. Speed claims are ratios from this one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from runtime.bundle.loader import Bundle
from runtime.bundle.manifest import BundleError
from runtime.detect.detector import Detector
from runtime.detect.encoders import image_component

from . import reporting, serve_vs_detect
from .flops import graph_flops, matmul_peak_gflops
from .metrics import percentiles, stage_table
from .peaks import compiled_ms, gemm_peak_gflops, on_gpu, peak_line, percent_of_peak
from .peer import winclip_ms


def frames(n: int, size=(480, 640), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = np.clip(rng.normal(128, 10, (*size, 3)), 0, 255).astype(np.uint8)
        if i % 2:
            cv2.line(image, (100, 100 + i), (400, 250), (20, 20, 20), 5)
        out.append(image)
    return out


def measure(bundle: Path, precision: str, providers: tuple[str, ...], n: int, refs, allow: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        detector = Detector.from_bundle(
            bundle, precision=precision, providers=providers, text_cache_dir=cache, allow_unverified_precision=allow
        )
        load_ms = (time.perf_counter() - t) * 1e3
        test = frames(n)
        t = time.perf_counter()
        memory = detector.remember(refs, colour="RGB") if refs else None  # cold: the reference memory,
        detector.detect(test[0], "part", memory, colour="RGB")  # text embeddings, arenas
        first_ms = (time.perf_counter() - t) * 1e3
        base = detector.settings
        ok = detector.with_settings(replace(base, sam_gate=1.0))  # OK frames: the encoder and the maps only
        t = time.perf_counter()
        ok_results = [ok.detect(f, "part", memory, colour="RGB") for f in test]
        sequential_s = time.perf_counter() - t
        # suspicious frames: the whole frame is one candidate, so the refiner always runs
        suspicious = detector.with_settings(replace(base, sam_gate=0.0, region_threshold=0.0, max_region_frac=1.0))
        suspicious = [suspicious.detect(f, "part", memory, colour="RGB") for f in test[: max(3, n // 4)]]
    return {
        "precision": precision,
        "providers": list(detector.providers),
        "cold": {"load_ms": load_ms, "first_frame_ms": first_ms},
        "ok_frames": stage_table(ok_results),
        "suspicious_frames": stage_table(suspicious),
        "sequential_fps": n / sequential_s,
    }


def torch_eager(bundle: Bundle, threads: int, n: int = 10, device: str = "cpu", fp16: bool = False) -> dict | None:
    """The same architecture and resolution in torch eager (None without the export extra).

    On a GPU box: device "cuda" and fp16, the reference a GPU user would run instead.
    """
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    dtype = torch.float16 if fp16 else torch.float32

    def timed(module, x, repeats):
        module = module.to(device=device, dtype=dtype)
        x = x.to(device=device, dtype=dtype)
        times = []
        with torch.inference_mode():
            module(x)
            for _ in range(repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                module(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1e3)
        return times

    comp = image_component(bundle)
    size = comp.inputs[0].shape[-1]
    if comp.source.get("library") == "open_clip":
        from export.clip_graphs import ClipImageGraph
        from export.clip_model import load_clip

        model, _ = load_clip(comp.source["architecture"], image_size=size)
        norm = comp.preprocessing["normalisation"]
        graph = ClipImageGraph(
            model.visual, norm["mean"], norm["std"], comp.source["vv_from"], [t["layer"] for t in comp.config["taps"]]
        ).eval()
    else:
        from export.patch_encoder import PatchEncoderGraph, PatchSpec, freeze_same_padding, load_lite0

        model, _ = load_lite0(PatchSpec(random_init=True))
        graph = PatchEncoderGraph(freeze_same_padding(model, size)).eval()
    x = torch.rand(1, 3, size, size) * 255
    out = {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "image_encoder_ms": percentiles(timed(graph, x, n)),
        "image_encoder_compiled_ms": compiled_ms(timed, graph, x, n, device),
    }
    if (sam := bundle.by_role("sam_encoder")) is not None:
        from export.sam_export import SamEncoderGraph, load_sam

        variant = sam.source["architecture"].removeprefix("sam_")
        sam_graph = SamEncoderGraph(load_sam(variant)[0]).eval()
        out["sam_encoder_ms"] = statistics.median(timed(sam_graph, torch.rand(1, 3, 1024, 1024) * 255, 3))
        out["sam_encoder_compiled_ms"] = compiled_ms(timed, sam_graph, torch.rand(1, 3, 1024, 1024) * 255, 3, device)
    return out


def run(args) -> dict:
    bundle = Bundle.open(args.bundle)
    image = image_component(bundle)
    refs = None if "language" in image.config["branches"] else frames(4, seed=9)  # few-shot bundles need some
    threads = args.threads or os.cpu_count()
    peak = matmul_peak_gflops()
    gflop = graph_flops(bundle.file_path(image.files["fp32"])) / 1e9
    data = {
        "bundle_id": bundle.bundle_id,
        "profile": bundle.manifest.profile,
        "machine": reporting.machine(),
        "caveats": list(args.caveat or []),
        "matmul_peak_gflops": peak,
        "image_graph_gflop": gflop,
        "runs": [],
    }
    providers, allow = tuple(args.providers), args.allow_unverified_precision
    for precision in args.precisions:
        if precision not in image.files:
            continue
        entry = measure(args.bundle, precision, providers, args.frames, refs, allow)
        entry["image_encoder_gflops"] = gflop / (entry["ok_frames"]["image_encoder"]["p50"] / 1e3)
        data["runs"].append(entry)
    serve_precision = args.serve_precision or next((r["precision"] for r in data["runs"]), None)
    data["serve_vs_detect"] = (
        serve_vs_detect.compare(
            args.bundle, frames(args.trial_frames or args.frames), refs, args.trials, serve_precision, providers, allow
        )
        if args.trials and serve_precision
        else None
    )
    gpu = args.torch and any(on_gpu(r) for r in data["runs"])  # the GPU's own fp16 peak for its rows
    data["gpu_gemm_peak_gflops"] = gemm_peak_gflops(args.torch_device) if gpu else None
    data["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data["torch_eager"] = (
        torch_eager(bundle, threads, device=args.torch_device, fp16=args.torch_fp16) if args.torch else None
    )
    data["peer"] = winclip_ms() if args.peer else None
    return data


def markdown(data: dict) -> str:
    lines = [
        f"# Latency: bundle `{data['bundle_id']}` ({data['profile']})",
        "",
        f"{peak_line(data)} Image graph: {data['image_graph_gflop']:.2f} GFLOP per frame.",
        "",
    ]
    if data.get("caveats"):
        lines[1:1] = ["", "Caveats:", "", *[f"- {c}" for c in data["caveats"]]]
    rows = []
    for run_ in data["runs"]:
        enc = run_["ok_frames"]["image_encoder"]
        rows.append(
            {
                "precision": run_["precision"],
                "providers": ",".join(run_["providers"]),
                "encoder p50 ms": enc["p50"],
                "encoder p90": enc["p90"],
                "encoder p99": enc["p99"],
                "OK frame total p50": run_["ok_frames"]["total"]["p50"],
                "detect-only fps": run_["sequential_fps"],
                "GFLOP/s": run_["image_encoder_gflops"],
                "% of peak": percent_of_peak(run_, data),
                "cold load ms": run_["cold"]["load_ms"],
                "first frame ms": run_["cold"]["first_frame_ms"],
            }
        )
    lines += [reporting.table(rows, list(rows[0]) if rows else []), ""]
    for run_ in data["runs"]:
        if run_["suspicious_frames"]:
            srows = [{"stage": k, **v} for k, v in run_["suspicious_frames"].items()]
            lines += [
                f"Suspicious frames, {run_['precision']} (regions refined):",
                "",
                reporting.table(srows, ["stage", "p50", "p90", "p99", "n"]),
                "",
            ]
    if data.get("serve_vs_detect"):
        lines += serve_vs_detect.markdown(data["serve_vs_detect"])
    lines += ["## Ratios (this run)", "", *_ratios(data), "", f"Peak RSS: {data['peak_rss_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def _ratios(data: dict) -> list[str]:
    """The side-by-side ratios of one run, one Markdown bullet each."""

    def encoder(run_: dict) -> float:
        return run_["ok_frames"]["image_encoder"]["p50"]

    fp32 = next((r for r in data["runs"] if r["precision"] == "fp32"), None)
    if fp32 is None:
        return []
    out = [
        f"- {r['precision']} encoder speed-up over ORT fp32: {encoder(fp32) / encoder(r):.2f}x"
        for r in data["runs"]
        if r is not fp32
    ]
    eager = data.get("torch_eager")
    if eager:
        out += [
            f"- ORT {r['precision']} vs torch eager {eager.get('dtype', 'float32')} on {eager.get('device', 'cpu')}, "
            f"image encoder p50: {eager['image_encoder_ms']['p50'] / encoder(r):.2f}x"
            for r in data["runs"]
        ]
        fast = eager.get("image_encoder_compiled_ms") or {}
        out += [
            f"- ORT {r['precision']} vs torch.compile {eager.get('dtype')} on {eager.get('device')}, image encoder "
            f"p50: {fast['p50'] / encoder(r):.2f}x"
            for r in data["runs"]
            if "p50" in fast
        ]
        if "error" in fast:
            out.append(f"- torch.compile peer failed: {fast['error']}")
        if "sam_encoder_ms" in eager and "sam_encoder" in fp32["suspicious_frames"]:
            out.append(
                f"- SAM encoder ORT fp32 vs torch eager: "
                f"{eager['sam_encoder_ms'] / fp32['suspicious_frames']['sam_encoder']['p50']:.2f}x"
            )
    peer = data.get("peer")
    if peer:
        out += [
            f"- lineside {r['precision']} vs {peer['model']} ({peer['backbone']} at {peer['size']}, "
            f"{'random' if peer['random_weights'] else 'pretrained'} weights, {peer['ms_p50']:.0f} ms): "
            f"{peer['ms_p50'] / r['ok_frames']['total']['p50']:.1f}x per OK frame, "
            f"{peer['ms_p50'] / r['suspicious_frames']['total']['p50']:.1f}x per suspicious frame"
            for r in data["runs"]
        ]
    elif "peer" in data:
        out.append("- WinCLIP peer: not measured (anomalib not installed or --peer not given)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "fp16", "int8"])
    ap.add_argument("--providers", type=lambda s: s.split(","), default=["cpu"])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--trials", type=int, default=5, help="interleaved detect-only / serve trials per mode (0: none)")
    ap.add_argument("--trial-frames", type=int, help="frames per serve / detect-only trial (default: --frames)")
    ap.add_argument("--serve-precision", help="the precision serve is compared at (default: the first measured)")
    ap.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True, help="torch eager side by side")
    ap.add_argument("--torch-device", default="cpu", help="cpu or cuda (a GPU box)")
    ap.add_argument("--peer", action="store_true", help="time anomalib's WinCLIP beside (extra: lineside[peer])")
    ap.add_argument("--torch-fp16", action="store_true", help="the torch reference in fp16 (GPU)")
    ap.add_argument("--allow-unverified-precision", action="store_true", help="time graphs outside their bound")
    ap.add_argument("--caveat", action="append", help="a sentence the report is to be read with (repeatable)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        data = run(args)
    except BundleError as e:  # a precision outside its parity bound (PrecisionError), or a bundle that cannot run
        print(f"latency failed: {e}", file=sys.stderr)
        return 1
    reporting.publish(args.out or reporting.REPORTS / f"latency-{data['profile']}", "latency", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
