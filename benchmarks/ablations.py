"""python -m benchmarks.ablations --bundle bundles/default --shots 16

The few-shot scoring choices, one at a time, on ELPV cells: every cell is
encoded once (the bundle's image graph, fp32), then each variant scores the
same held-out cells against the same references through the runtime's own
memory and scoring code (references.py, scoring.py). Variants: where a patch is
compared (in place within a window, or anywhere), how the map becomes an image
score (its maximum, or the mean of its top fraction), whether the global
embedding is blended in, the feature levels (the encoder's two stages scored
together, apart, or one alone), and a reference subset per frame (the nearest
references by global embedding, for cells whose layout varies). Uncertain cells
are left out (defective against functional only).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np

from runtime.detect.detector import Detector
from runtime.detect.frames import read_image
from runtime.detect.references import ReferenceMemory
from runtime.detect.scoring import image_score, l2_normalize, sigma_at, upsample_smooth

from . import reporting
from .datasets import elpv
from .metrics import binary_metrics

log = logging.getLogger("lineside.bench")

# name -> settings; defaults: window 1, top 0.01, map_weight 1, both levels concatenated, every reference
VARIANTS = {
    "in place, window 1, top 1% (the demo's)": {},
    "anywhere (window 0, exact)": {"window": 0},
    "in place, window 2": {"window": 2},
    "image score = map maximum": {"top": 0.0},
    "image score = top 0.5%": {"top": 0.005},
    "image score = top 3%": {"top": 0.03},
    "global embedding blended in (map_weight 0.8)": {"map_weight": 0.8},
    "stride-8 stage only": {"levels": "first"},
    "stride-16 stage only": {"levels": "second"},
    "two stages scored apart, maps averaged": {"levels": "apart"},
    "nearest 8 references per frame (global embedding), spread of all": {"nearest": 8},
    "nearest 12 references per frame (global embedding), spread of all": {"nearest": 12},
    "nearest 8 references per frame, spread re-estimated from them": {"nearest": 8, "respread": True},
}
SLOW = {"anywhere (window 0, exact)"}  # an exact search of every patch: minutes on 2 cores


def encode_cells(detector: Detector, seed: int, limit: int | None) -> list[dict]:
    """Per cell type: globals (M, D), tokens (M, N, D) float16, labels; references first, uncertain cells out."""
    rng, out = np.random.default_rng(seed + 1), []
    for cat in elpv(seed):
        tests = [s for s in cat.test if s.kind != "uncertain"]
        if limit:
            good = [s for s in tests if s.label == 0]
            bad = [s for s in tests if s.label == 1]
            tests = [good[i] for i in sorted(rng.choice(len(good), min(limit, len(good)), replace=False))] + bad
        paths = list(cat.normal_pool) + [s.path for s in tests]
        encoded = [detector.encoder.encode(read_image(p)) for p in paths]
        assert all(len(t) == 1 for _, t in encoded), "one tap expected"
        out.append(
            {
                "name": cat.name,
                "globals": np.stack([g for g, _ in encoded]),
                "tokens": np.stack([t[0] for _, t in encoded]).astype(np.float16),
                "labels": np.array([0] * len(cat.normal_pool) + [s.label for s in tests]),
                "pool": len(cat.normal_pool),
            }
        )
        log.info("%s: %d cells encoded", cat.name, len(paths))
    return out


def _level(tokens: np.ndarray, which: str, split: int) -> np.ndarray:
    if which == "first":
        return l2_normalize(tokens[..., :split])
    if which == "second":
        return l2_normalize(tokens[..., split:])
    return tokens


def score_type(cells: dict, variant: dict, shots: int, detector: Detector, split: int) -> float:
    """Image AUROC of one variant on one cell type."""
    grid, size = detector.encoder.grid, detector.encoder.size
    sigma = sigma_at(size[0], detector.settings.smoothing_sigma)
    window, levels = variant.get("window", 1), variant.get("levels", "both")
    levels = ["first", "second"] if levels == "apart" else [levels]
    tokens, globals_ = cells["tokens"], cells["globals"]

    def memories(idx, spreads=None):
        out = {}
        for lv in levels:
            encoded = [(globals_[i], [_level(tokens[i].astype(np.float32), lv, split)]) for i in idx]
            memory = ReferenceMemory.from_encoded("ablation", "ablation", encoded, 1.0, "numpy", window, grid)
            out[lv] = memory if spreads is None else dataclasses.replace(memory, spread=spreads[lv])
        return out

    refs = np.arange(shots)
    mems = memories(refs)
    spreads = None if variant.get("respread") else {lv: m.spread for lv, m in mems.items()}
    scores = []
    for i in range(cells["pool"], len(tokens)):
        if variant.get("nearest"):
            mems = memories(refs[np.argsort(-(globals_[refs] @ globals_[i]))[: variant["nearest"]]], spreads)
        grids, global_p = [], 0.0
        for lv, memory in mems.items():
            g, global_p = memory.score(globals_[i], [_level(tokens[i].astype(np.float32), lv, split)], grid)
            grids.append(g)
        amap = upsample_smooth(np.mean(grids, axis=0).astype(np.float32), size, sigma)
        scores.append(image_score(global_p, amap, variant.get("map_weight", 1.0), variant.get("top", 0.01)))
    return binary_metrics(cells["labels"][cells["pool"] :].tolist(), scores)["auroc"]


def run(args) -> dict:
    detector = Detector.from_bundle(args.bundle, threads=args.threads)
    split = int(args.first_level_channels)
    cells = encode_cells(detector, args.seed, args.limit)
    rows = []
    for name, variant in VARIANTS.items():
        if name in SLOW and not args.slow:
            continue
        t = time.perf_counter()
        row = {"variant": name} | {c["name"]: score_type(c, variant, args.shots, detector, split) for c in cells}
        row["mean"] = float(np.mean([row[c["name"]] for c in cells]))
        row["s"] = time.perf_counter() - t
        rows.append(row)
        log.info("%s: mean AUROC %.3f (%.0f s)", name, row["mean"], row["s"])
    counts = {c["name"]: {"references": args.shots, "tested": len(c["tokens"]) - c["pool"]} for c in cells}
    return {"rows": rows, "cells": counts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ablations", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="at most N functional test cells per type (all defective cells kept)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--first-level-channels", default=40, help="channels of the encoder's first stage in its tokens")
    ap.add_argument("--slow", action="store_true", help="also the exact search of every patch (minutes)")
    ap.add_argument("--out", type=Path, default=reporting.REPORTS / "accuracy-elpv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = run(args)
    cols = ["variant", *result["cells"], "mean", "s"]
    md = "\n".join(
        [
            f"# Ablations: ELPV, {args.shots} shots, bundle {args.bundle}",
            "",
            f"Seed {args.seed}; cells per type: {result['cells']}. Image AUROC, defective vs functional.",
            "",
            reporting.table(result["rows"], cols),
            "",
        ]
    )
    reporting.write(args.out, "ablations", {"args": vars(args) | {"out": str(args.out)}} | result, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
