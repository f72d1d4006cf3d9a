"""Parity figures between two runs of a graph, and what misses a bound; numpy only.

One implementation for both sides: export compares its graphs with torch
(export/parity.py), the runtime compares a precision variant with the fp32
graph on the machine that will run it (verify.py). A bound is the manifest's
`parity.bound`: {min_cosine, max_rel_diff, min_mask_iou}.
"""

from __future__ import annotations

import numpy as np

FIGURES = ("cosine", "max_rel_diff", "mask_iou")  # the figures a bound judges


def row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest cosine similarity between matching rows (last axis = features)."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return float(cos.min())


def mask_iou(a_logits: np.ndarray, b_logits: np.ndarray, threshold: float = 0.0) -> float:
    """IoU of the binary masks `logits > threshold`; two empty masks agree fully."""
    a, b = a_logits > threshold, b_logits > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], masks: tuple[str, ...] = ()) -> dict:
    """Figures per output of `reference`: max abs diff, relative diff (max|a-b| / max|a|), the
    smallest row cosine, and IoU for the outputs named in `masks`. ValueError on a shape mismatch."""
    figures = {}
    for name, ref in reference.items():
        out = np.asarray(got[name], dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        if out.shape != ref.shape:
            raise ValueError(f"output {name}: shape {out.shape} differs from the reference's {ref.shape}")
        diff = float(np.abs(out - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        entry = {
            "max_abs_diff": diff,
            "max_rel_diff": diff / max(scale, 1e-12),
            "cosine": row_cosine(ref, out) if ref.ndim >= 1 and ref.size else 1.0,
        }
        if name in masks:
            entry["mask_iou"] = mask_iou(ref, out)
        figures[name] = {k: round(v, 7) for k, v in entry.items()}
    return figures


def worst(per_case: list[dict]) -> dict:
    """Merge the figures of several cases, keeping the worst value of each."""
    merged: dict[str, dict] = {}
    for figures in per_case:
        for name, entry in figures.items():
            into = merged.setdefault(name, dict(entry))
            for key, value in entry.items():
                bad_high = key.startswith("max_")
                into[key] = max(into[key], value) if bad_high else min(into[key], value)
    return merged


def failures(figures: dict, bound: dict, judged: tuple[str, ...] = FIGURES) -> list[str]:
    """One line per figure of `judged` that misses `bound`, e.g. "masks: cosine 0.950000 < 0.98"."""
    out = []
    for name, f in figures.items():
        if "cosine" in judged and f["cosine"] < bound["min_cosine"]:
            out.append(f"{name}: cosine {f['cosine']:.6f} < {bound['min_cosine']}")
        if "max_rel_diff" in judged and f["max_rel_diff"] > bound["max_rel_diff"]:
            out.append(f"{name}: relative diff {f['max_rel_diff']:.2e} > {bound['max_rel_diff']}")
        if "mask_iou" in judged and "mask_iou" in f and f["mask_iou"] < bound["min_mask_iou"]:
            out.append(f"{name}: mask IoU {f['mask_iou']:.4f} < {bound['min_mask_iou']}")
    return out
