"""Parity between the eager torch model and its ONNX graph, measured at export.

Figures are written into the manifest per precision. fp32 must meet `FP32_BOUND`
or the export fails; fp16 and int8 are measured the same way and recorded with a
flag saying whether they meet the advisory bound for their precision, because a
quantised graph that keeps image scores can still ruin anomaly maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Bound:
    """Worst acceptable figures. `max_rel_diff` is max|a-b| / max|a| per output."""

    min_cosine: float
    max_rel_diff: float
    min_mask_iou: float


BOUNDS = {
    "fp32": Bound(min_cosine=0.9999, max_rel_diff=1e-3, min_mask_iou=0.99),
    "fp16": Bound(min_cosine=0.999, max_rel_diff=2e-2, min_mask_iou=0.95),
    "int8": Bound(min_cosine=0.98, max_rel_diff=0.25, min_mask_iou=0.80),
}


class ParityError(RuntimeError):
    """The exported fp32 graph does not compute what the torch model computes."""


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
    """Figures per output: max abs diff, relative diff, cosine; IoU for mask outputs."""
    figures = {}
    for name, ref in reference.items():
        out = np.asarray(got[name], dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        if out.shape != ref.shape:
            raise ParityError(f"output {name}: onnx shape {out.shape} != torch shape {ref.shape}")
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


def judge(figures: dict, precision: str) -> dict:
    """Attach the bound and a pass flag; raise for an fp32 graph that fails it."""
    bound = BOUNDS[precision]
    failures = []
    for name, f in figures.items():
        if f["cosine"] < bound.min_cosine:
            failures.append(f"{name}: cosine {f['cosine']:.6f} < {bound.min_cosine}")
        if f["max_rel_diff"] > bound.max_rel_diff:
            failures.append(f"{name}: relative diff {f['max_rel_diff']:.2e} > {bound.max_rel_diff}")
        if "mask_iou" in f and f["mask_iou"] < bound.min_mask_iou:
            failures.append(f"{name}: mask IoU {f['mask_iou']:.4f} < {bound.min_mask_iou}")
    if failures and precision == "fp32":
        raise ParityError("fp32 graph disagrees with torch: " + "; ".join(failures))
    return {"outputs": figures, "bound": asdict(bound), "within_bound": not failures, "failures": failures}


def summary(parity: dict) -> str:
    """One short line for the closing table: worst cosine, worst IoU if any."""
    outs = parity["outputs"].values()
    text = f"cos>={min(f['cosine'] for f in outs):.5f}"
    ious = [f["mask_iou"] for f in outs if "mask_iou" in f]
    if ious:
        text += f" IoU>={min(ious):.4f}"
    return text + ("" if parity["within_bound"] else " (outside bound)")
