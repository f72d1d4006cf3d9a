"""python -m benchmarks.neighbours --bundle bundles/default [--configs exact,coreset:0.1,faiss] [--out DIR]

The reference stage side by side: exact search over every reference patch,
greedy k-center coresets, and the faiss HNSW index (when installed), on the
README's ELPV cells (16 shots per cell type, the demo's held-out cells). Every
cell is encoded once per configuration in turn (interleaved, so that a busy
machine slows them alike); per configuration: the reference stage's and the
encoder's p50/p90 ms, the time to build the memory, and the image AUROC per
cell type and pooled. Speed claims are ratios from this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.detect.detector import Detector
from runtime.detect.frames import read_image
from runtime.machine import describe

from . import reporting
from .datasets import elpv
from .demo import SHOTS, held_out
from .metrics import binary_metrics

DEFAULT_CONFIGS = "exact,coreset:0.05,coreset:0.1,coreset:0.25,faiss"


EXTRA = {"window": ("reference_window", int), "top": ("top_fraction", float), "mapw": ("map_weight", float)}


def parse_config(spec: str) -> dict:
    """'exact' | 'coreset:R' | 'faiss', and the scoring ablations 'window:N' (position-aware), 'top:F' (image score
    from the top fraction of the map), 'mapw:W' (map weight), joined by + -> detector settings."""
    out = {"coreset_ratio": 1.0, "nn_index": "numpy"}
    for part in spec.split("+"):
        name, _, value = part.partition(":")
        if name == "coreset":
            out["coreset_ratio"] = float(value)
        elif name == "faiss":
            out["nn_index"] = "faiss"
        elif name in EXTRA:
            out[EXTRA[name][0]] = EXTRA[name][1](value)
        elif name != "exact":
            raise ValueError(f"unknown configuration {part!r}: use exact, coreset:R, faiss, window:N, top:F, mapw:W")
    return out


def run(bundle: Path, configs: list[str], per_class: int, seed: int, threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        made = {c: parse_config(c) for c in configs}
        detectors = {
            c: Detector.from_bundle(bundle, reference_cache_dir=Path(cache), threads=threads, **made[c])
            for c in configs
        }
        rows = {c: {"config": c, "build_s": 0.0, "reference": [], "image_encoder": [], "scores": {}} for c in configs}
        labels = {}
        for cat in elpv(seed):
            images = [read_image(p) for p in cat.normal_pool[:SHOTS]]
            memories = {}
            for c, detector in detectors.items():
                t = time.perf_counter()
                memories[c] = detector.remember(images, colour="RGB")
                rows[c]["build_s"] += time.perf_counter() - t
            samples = held_out(cat, per_class, seed)
            labels[cat.name] = [s.label for s in samples]
            for sample in samples:
                rgb = read_image(sample.path)
                for c, detector in detectors.items():
                    result = detector.detect(rgb, cat.name, memories[c], colour="RGB")
                    rows[c]["scores"].setdefault(cat.name, []).append(result.image_score)
                    for stage in ("reference", "image_encoder"):
                        rows[c][stage].append(result.timings_ms[stage])
    return {
        "rows": [_summary(r, labels) for r in rows.values()],
        "machine": describe(),
        "shots": SHOTS,
        "per_class": per_class,
        "bundle": str(bundle),
    }


def _summary(row: dict, labels: dict) -> dict:
    out = {"config": row["config"], "build_s": row["build_s"]}
    for stage in ("reference", "image_encoder"):
        out[f"{stage}_p50_ms"] = statistics.median(row[stage])
        out[f"{stage}_p90_ms"] = float(np.percentile(row[stage], 90))
    for name, scores in row["scores"].items():
        out[f"auroc_{name}"] = binary_metrics(labels[name], scores)["auroc"]
    pooled = [s for name in row["scores"] for s in row["scores"][name]]
    out["auroc_pooled"] = binary_metrics([y for name in row["scores"] for y in labels[name]], pooled)["auroc"]
    return out


def markdown(data: dict) -> str:
    rows, m = data["rows"], data["machine"]
    exact = next((r for r in rows if r["config"] == "exact"), rows[0])
    for r in rows:
        r["speedup"] = exact["reference_p50_ms"] / max(r["reference_p50_ms"], 1e-9)
        r["ref_vs_encoder"] = r["reference_p50_ms"] / max(r["image_encoder_p50_ms"], 1e-9)
        r["d_auroc_pooled"] = r["auroc_pooled"] - exact["auroc_pooled"]
    cats = sorted(k[6:] for k in rows[0] if k.startswith("auroc_") and k != "auroc_pooled")
    cols = [
        "config",
        "reference_p50_ms",
        "reference_p90_ms",
        "image_encoder_p50_ms",
        "speedup",
        "ref_vs_encoder",
        "build_s",
        *[f"auroc_{c}" for c in cats],
        "auroc_pooled",
        "d_auroc_pooled",
    ]
    return "\n".join(
        [
            "# Reference stage: exact search, coresets, faiss index; scoring ablations",
            "",
            f"ELPV, {data['shots']} shots per cell type, {data['per_class']} good + {data['per_class']} defective "
            f"held-out cells per type; bundle {data['bundle']}.",
            "",
            f"Command: `{data.get('command', 'python -m benchmarks.neighbours')}`",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, ISA {', '.join(m['isa']) or '-'}, "
            f"onnxruntime {m['onnxruntime']}.",
            "",
            reporting.table(rows, cols),
            "",
            "speedup: exact's reference p50 / this one's; ref_vs_encoder: reference p50 / encoder p50 (target <= 1); "
            "d_auroc_pooled: pooled AUROC minus exact's (target within 0.005). build_s: memories of both types, "
            "built once (then read from the disk cache). Configurations: exact searches every reference patch; "
            "coreset:R searches a greedy k-center coreset of that share first, then the farthest patches again in all; "
            "faiss an HNSW graph, refined the same way; window:N compares each patch only with the references' "
            "patches within N grid cells of its place (registered parts); top:F scores the image by the mean of the "
            "map's top F of pixels instead of its maximum; mapw:W weighs the map against the global embedding "
            "(default 0.5). The demo runs window:1+top:0.01+mapw:1.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.neighbours", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list (default {DEFAULT_CONFIGS})")
    ap.add_argument("--per-class", type=int, default=40, help="good and defective cells per type")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="onnxruntime threads (with OPENBLAS_NUM_THREADS for numpy's)")
    ap.add_argument("--out", type=Path, default=reporting.REPORTS / "neighbours")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        parse_config(c)
    data = run(args.bundle, configs, args.per_class, args.seed, args.threads)
    data["command"] = f"python -m benchmarks.neighbours --bundle {args.bundle} --configs {','.join(configs)}"
    data["command"] += f" --per-class {args.per_class} --seed {args.seed}"
    if args.threads:
        blas = os.environ.get("OPENBLAS_NUM_THREADS")
        data["command"] = (
            (f"OPENBLAS_NUM_THREADS={blas} " if blas else "") + data["command"] + f" --threads {args.threads}"
        )
    reporting.publish(args.out, "report", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
