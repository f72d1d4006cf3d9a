"""Accuracy as the mean over several draws of references, every image encoded once.

One draw of k references says as much about the references drawn as about the
method: at 1 or 4 shots the spread between draws is larger than most of the
differences between scoring choices. So every image of a data set goes through
the bundle's image graph once (`encode`), and each draw then builds its memory
from the encodings of the references it drew and scores every test sample
through `Detector.score_encoded`, the scoring `detect` runs on the line, beside
the baselines on the same encodings:

* `patchcore_same_encoder`: PatchCore's recipe on the same encoder: every
  reference patch in one bank, a greedy k-center coreset of 10%, each frame
  patch's distance to its nearest bank patch anywhere, image score the largest,
  map the raw grid (no smoothing, no position, no calibration);
* `global_feature`: the nearest reference by global embedding;
* `raw_pixels`: the nearest reference in 64x64 grey pixels.

The image score never depends on SAM (it is set before regions are cut), so the
image metrics are the product's exactly; pixel metrics are of the map before
SAM's refinement (the default bundle has no SAM).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from runtime.detect.detector import Detector
from runtime.detect.frames import read_image
from runtime.detect.neighbours import NumpySearch, coreset_indices
from runtime.detect.references import ReferenceMemory
from runtime.detect.scoring import as_distance

from .datasets import Category, read_mask
from .metrics import binary_metrics, pixel_auroc_aupro

log = logging.getLogger("lineside.bench")
RAW_SIDE = 64  # raw-pixel baseline: images compared at this side, in grey
PATCHCORE_CORESET = 0.1  # PatchCore's usual coreset share of the reference patches
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


@dataclass
class Encoded:
    """One category, every image encoded once: the normal pool (references are drawn from it) and the tests."""

    name: str
    pool: list  # per pool image: (global (D,), taps [(N, D)]) as ImageEncoder.encode gives
    pool_grey: np.ndarray  # (P, RAW_SIDE, RAW_SIDE) float32
    tests: list  # per test sample, as `pool`
    test_grey: np.ndarray
    labels: np.ndarray  # 0 normal, 1 defective
    kinds: list[str]  # "good", a defect kind, or "uncertain"
    masks: list  # per test sample an HxW bool mask at the image's size, or None (no masks in the data set)
    encode_ms: list[float] = field(default_factory=list)


def encode(detector: Detector, categories: list[Category]) -> list[Encoded]:
    """Every pool and test image of `categories` through the detector's image graph, once."""
    out = []
    for cat in categories:
        t0 = time.perf_counter()
        ms: list[float] = []

        def run(path, ms=ms):
            rgb = read_image(path)
            t = time.perf_counter()
            encoded = detector.encoder.encode(rgb)
            ms.append((time.perf_counter() - t) * 1e3)
            return encoded, _grey(rgb), rgb.shape[:2]

        pool = [run(p) for p in cat.normal_pool]
        tests = [run(s.path) for s in cat.test]
        masks = [read_mask(s.mask, shape) if cat.has_masks else None for s, (_, _, shape) in zip(cat.test, tests)]
        out.append(
            Encoded(
                cat.name,
                [e for e, _, _ in pool],
                np.stack([g for _, g, _ in pool]),
                [e for e, _, _ in tests],
                np.stack([g for _, g, _ in tests]),
                np.array([s.label for s in cat.test]),
                [s.kind for s in cat.test],
                masks,
                ms,
            )
        )
        log.info("%s: %d images encoded in %.0f s", cat.name, len(pool) + len(tests), time.perf_counter() - t0)
    return out


def _grey(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (RAW_SIDE, RAW_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def draw_references(pool_size: int, shots: int, seed: int, draw: int) -> np.ndarray:
    """The pool indices of one draw: `shots` of them, without repeats, seeded by (seed, draw)."""
    if shots > pool_size:
        raise ValueError(f"{shots} shots asked, the reference pool holds only {pool_size} normal images")
    return np.sort(np.random.default_rng([seed, draw, shots]).choice(pool_size, shots, replace=False))


# --- the methods: each (detector, Encoded, reference indices) -> per test (score, map or None) ------------------


def lineside(detector: Detector, cat: Encoded, refs: np.ndarray) -> list:
    """The product: a memory built as serve builds it (its settings), every test scored by score_encoded."""
    s, encoder = detector.settings, detector.encoder
    if not len(refs):  # zero-shot: the language branch alone
        return [detector.score_encoded(g, taps, cat.name, None) for g, taps in cat.tests]
    memory = ReferenceMemory.from_encoded(
        f"{cat.name}:{refs.tolist()}",
        encoder.identity,
        [cat.pool[i] for i in refs],
        s.coreset_ratio,
        s.nn_index,
        s.reference_window,
        encoder.grid,
    )
    return [detector.score_encoded(g, taps, cat.name, memory) for g, taps in cat.tests]


def patchcore(detector: Detector, cat: Encoded, refs: np.ndarray) -> list:
    """PatchCore's recipe on the same encodings (the module docstring)."""
    encoded = [cat.pool[i][1] for i in refs]
    banks = [np.concatenate([e[t] for e in encoded]) for t in range(len(encoded[0]))]  # (R * N, D) per tap
    keep = coreset_indices(np.concatenate(banks, axis=1), PATCHCORE_CORESET, 0)
    searches = [NumpySearch(np.ascontiguousarray(b[keep])) for b in banks]
    rows, cols = detector.encoder.grid
    out = []
    for _, taps in cat.tests:
        dist = np.mean([as_distance(s.max_similarity(t)) for s, t in zip(searches, taps)], axis=0)
        grid = dist.reshape(rows, cols).astype(np.float32)
        out.append((float(grid.max()), grid))
    return out


def global_feature(detector: Detector, cat: Encoded, refs: np.ndarray) -> list:
    bank = np.stack([cat.pool[i][0] for i in refs])
    return [(float((1.0 - (bank @ g).max()) / 2.0), None) for g, _ in cat.tests]


def raw_pixels(detector: Detector, cat: Encoded, refs: np.ndarray) -> list:
    bank = cat.pool_grey[refs]  # (R, s, s)
    out = []
    for grey in cat.test_grey:
        diff = np.abs(bank - grey[None])
        pixel = cv2.GaussianBlur(diff.min(axis=0), (5, 5), 1.0)
        out.append((float(diff[diff.mean(axis=(1, 2)).argmin()].mean()), pixel))
    return out


BASELINES = {"patchcore_same_encoder": patchcore, "global_feature": global_feature, "raw_pixels": raw_pixels}


# --- scoring the draws -----------------------------------------------------------------------------------------


def evaluate(
    methods: dict[str, tuple],
    cats: list[Encoded],
    shots: int,
    draws: int,
    seed: int = 0,
) -> list[dict]:
    """Each method (name -> (function, detector)) over `draws` reference draws at `shots` -> rows per category,
    "all (pooled)" and "mean" (over categories, per draw), each metric's mean and standard deviation."""
    per_draw: dict[tuple[str, str], list[dict]] = {}
    for d in range(draws):
        for name, (method, detector) in methods.items():
            t = time.perf_counter()
            pooled_labels, pooled_scores, means = [], [], []
            for cat in cats:
                refs = draw_references(len(cat.pool), shots, seed, d)
                scored = method(detector, cat, refs)
                keep = [i for i, k in enumerate(cat.kinds) if k != "uncertain"]
                m = _metrics(cat, scored, keep)
                per_draw.setdefault((cat.name, name), []).append(m)
                means.append(m)
                if "uncertain" in cat.kinds:
                    apart = [i for i, k in enumerate(cat.kinds) if k != "defective"]
                    per_draw.setdefault((f"{cat.name} (uncertain vs normal)", name), []).append(
                        _metrics(cat, scored, apart, pixels=False)
                    )
                pooled_labels += [int(cat.labels[i]) for i in keep]
                pooled_scores += [scored[i][0] for i in keep]
            if len(cats) > 1:
                pooled = {f"image_{k}": v for k, v in binary_metrics(pooled_labels, pooled_scores).items()}
                per_draw.setdefault(("all (pooled)", name), []).append(pooled)
                mean = {k: float(np.nanmean([m.get(k, math.nan) for m in means])) for k in means[0]}
                per_draw.setdefault(("mean", name), []).append(mean)
            log.info("%s, %d shots, draw %d: %.1f s", name, shots, d + 1, time.perf_counter() - t)
    rows = []
    for (category, name), ms in per_draw.items():
        row = {"category": category, "method": name, "shots": shots, "draws": len(ms)}
        for key in METRICS:
            values = [m[key] for m in ms if key in m and not math.isnan(m[key])]
            if values:
                row[key] = float(np.mean(values))
                row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def _metrics(cat: Encoded, scored: list, keep: list[int], pixels: bool = True) -> dict:
    out = {
        f"image_{k}": v
        for k, v in binary_metrics([int(cat.labels[i]) for i in keep], [scored[i][0] for i in keep]).items()
    }
    if pixels and cat.masks[0] is not None and scored[0][1] is not None:
        masks = [cat.masks[i] for i in keep]
        maps = [
            cv2.resize(scored[i][1], (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR)
            for i, m in zip(keep, masks)
        ]
        out |= pixel_auroc_aupro(masks, maps)
    return out


def variants(detector: Detector, specs: list[str] | None) -> dict[str, Detector]:
    """'NAME:KEY=VALUE,KEY=VALUE' -> {NAME: the detector with those settings}, settings converted as serve does."""
    from runtime.options import convert

    out = {}
    for spec in specs or []:
        name, sep, pairs = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"--variant {spec!r}: write NAME:KEY=VALUE[,KEY=VALUE], e.g. anywhere:reference_window=0")
        changes = {}
        for pair in filter(None, pairs.split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"--variant {spec!r}: {pair!r} is not KEY=VALUE")
            changes[key] = convert(key, value, "--variant")
        out[name] = detector.with_settings(replace(detector.settings, **changes))
    return out
