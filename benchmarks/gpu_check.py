"""python -m benchmarks.gpu_check --bundle DIR [--export edge] [--providers cuda,cpu] [--torch-device cuda]

Everything issue 13 leaves to a GPU, in one run: for each static encoder graph
(clip_image, sam_encoder) at fp32 and fp16, on the requested providers,

* agreement with the CPU fp32 graph (cosine per row, or per position for NCHW
  maps, and relative difference) for a plain run, an IO-bound run and, on
  CUDA, a CUDA-graph run (capture refused is reported, not hidden);
* p50/p90/p99 of each way of running it (warm-up excluded);
* SAM's encoder -> decoder with the embeddings kept on the device against the
  same steps through host memory;
* torch eager and torch.compile of the same modules, and the GPU's own fp16
  GEMM peak, for the ratios the issue's targets are stated in.

`--export PROFILE` first builds the bundle with random weights (fp32, fp16)
where DIR does not exist yet. On a machine without a GPU it dry-runs the same
code on the CPU provider (no CUDA-graph row). Writes
benchmarks/reports/gpu-check-PROFILE/{gpu_check.json, gpu_check.md}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.bundle.binding import BoundSession, device_of
from runtime.bundle.loader import Bundle
from runtime.bundle.preprocess import clip_input, sam_input

from . import reporting
from .latency import percentiles
from .peaks import gemm_peak_gflops

GRAPHS = ("clip_image", "sam_encoder")
FRAME = np.random.default_rng(7).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)


def feeds_for(component) -> dict[str, np.ndarray]:
    make = clip_input if component.name == "clip_image" else sam_input
    return {component.inputs[0].name: make(FRAME, component.preprocessing)}


def agreement(ref: dict, got: dict) -> dict:
    """Worst cosine (per position over channels for 4-D maps, else per row) and relative difference."""
    out = {}
    for name, a in ref.items():
        b = np.asarray(got[name], np.float64)
        a = np.asarray(a, np.float64)
        if a.ndim == 4:
            a, b = np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1)
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
        out[name] = {"cosine": float(cos.min()), "max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max())}
    return out


def timed(run, repeats: int) -> dict:
    run()  # warm-up: arenas, cuDNN algorithm search, CUDA-graph capture
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return percentiles(times)


def ways(bundle: Bundle, name: str, precision: str, providers: tuple[str, ...]) -> dict:
    """The ways of running one graph: plain, IO-bound, and CUDA-graph (bound) where CUDA is first."""
    comp = bundle.component(name)
    plain = bundle.session(name, precision, providers)
    out = {"plain": plain, "io_binding": BoundSession(plain, comp.inputs, comp.outputs)}
    if device_of(plain) == "cuda":
        captured = bundle.session(name, precision, providers, cuda_graph=True)
        if captured.cuda_graph:
            out["cuda_graph"] = BoundSession(captured, comp.inputs, comp.outputs, cuda_graph=True)
        else:
            out["cuda_graph"] = "capture refused (see the warning above)"
    return out


def check_graph(bundle: Bundle, name: str, precision: str, providers, repeats: int) -> list[dict]:
    comp = bundle.component(name)
    feeds = feeds_for(comp)
    reference = bundle.session(name, "fp32", ("cpu",)).run(feeds)
    rows = []
    for way, session in ways(bundle, name, precision, providers).items():
        row = {"graph": name, "precision": precision, "way": way}
        if isinstance(session, str):
            rows.append(row | {"note": session})
            continue
        got = session.run(feeds)
        worst = agreement(reference, got)
        row |= {
            "providers": ",".join(session.providers),
            "cosine": min(f["cosine"] for f in worst.values()),
            "max_rel_diff": max(f["max_rel_diff"] for f in worst.values()),
        }
        rows.append(row | timed(lambda s=session: s.run(feeds), repeats))
    return rows


def check_sam_chain(bundle: Bundle, providers, repeats: int) -> dict | None:
    """SAM encoder -> decoder with embeddings on the device, against host round trips."""
    from runtime.detect.regions import Candidate
    from runtime.detect.sam import SamRefiner, has_sam

    if not has_sam(bundle):
        return None
    found = [Candidate(np.zeros((120, 160), bool), (40, 30, 120, 90), (80.0, 60.0), 1.0)]
    parts = {on: SamRefiner(bundle, "fp32", providers, io_binding=on) for on in (False, True)}
    masks = {on: r.masks(r.embed(FRAME), (120, 160), found)[0] for on, r in parts.items()}
    agree = float((masks[False].mask == masks[True].mask).mean())
    times = {
        f"io_binding={on}": timed(lambda r=r: r.masks(r.embed(FRAME), (120, 160), found), repeats)
        for on, r in parts.items()
    }
    return {"mask_pixels_agreeing": agree, "iou_gap": abs(masks[False].iou - masks[True].iou), **times}


def run(args) -> dict:
    if not args.bundle.exists() and args.export:
        from export.build import build_bundle
        from export.profiles import PROFILES

        p = PROFILES[args.export]
        fp = {"precisions": ("fp32", "fp16")}
        build_bundle(args.bundle, args.export, clip=replace(p.clip, pretrained=None, **fp), sam=replace(p.sam, **fp))
    bundle = Bundle.open(args.bundle)
    providers = tuple(args.providers)
    rows = [
        row
        for name in GRAPHS
        if name in bundle.manifest.components
        for precision in ("fp32", "fp16")
        if precision in bundle.component(name).files
        for row in check_graph(bundle, name, precision, providers, args.repeats)
    ]
    torch_rows = None
    if args.torch:
        from .latency import torch_eager

        torch_rows = torch_eager(bundle, 4, args.repeats, args.torch_device, fp16=args.torch_device.startswith("cuda"))
    peak = gemm_peak_gflops(args.torch_device) if args.torch else None
    return {
        "bundle_id": bundle.bundle_id,
        "profile": bundle.manifest.profile,
        "machine": reporting.machine(),
        "providers": list(providers),
        "graphs": rows,
        "sam_chain": check_sam_chain(bundle, providers, args.repeats),
        "torch": torch_rows,
        "gpu_gemm_peak_gflops": peak,
    }


def markdown(data: dict) -> str:
    cols = ["graph", "precision", "way", "providers", "cosine", "max_rel_diff", "p50", "p90", "p99", "note"]
    lines = [
        f"# GPU check: bundle `{data['bundle_id']}` ({data['profile']}), providers {data['providers']}",
        "",
        "Agreement is with the CPU fp32 graph; times in ms, warm-up excluded.",
        "",
        reporting.table(data["graphs"], cols),
        "",
    ]
    if data["sam_chain"]:
        lines += [f"SAM encoder -> decoder, embeddings kept on the device vs through the host: {data['sam_chain']}", ""]
    if data["torch"]:
        lines += [f"torch peers: {data['torch']}", ""]
    if data["gpu_gemm_peak_gflops"]:
        lines += [f"GPU fp16 GEMM peak: {data['gpu_gemm_peak_gflops']:.0f} GFLOP/s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--export", choices=["tiny", "edge", "accuracy"], help="build DIR first (random weights) if absent")
    ap.add_argument("--providers", type=lambda s: tuple(s.split(",")), default=("cuda", "cpu"))
    ap.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True, help="torch eager/compile peers")
    ap.add_argument("--torch-device", default="cuda")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = run(args)
    reporting.publish(args.out or reporting.REPORTS / f"gpu-check-{data['profile']}", "gpu_check", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
