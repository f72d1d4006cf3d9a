"""Parity between the eager torch model and its ONNX graph, measured at export.

Figures are written into the manifest per precision. fp32 must meet `FP32_BOUND`
or the export fails; fp16 and int8 are measured the same way and recorded with a
flag saying whether they meet the bound for their precision, because a
quantised graph that keeps image scores can still ruin anomaly maps. The
runtime refuses a variant outside its bound, and measures each one again on
the machine that runs it (runtime/bundle/verify.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtime.bundle.parity import compare as figures_of
from runtime.bundle.parity import failures as missed
from runtime.bundle.parity import worst  # noqa: F401 (export.measure's; one implementation, torch-free)


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


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], masks: tuple[str, ...] = ()) -> dict:
    """Figures per output (runtime.bundle.parity.compare); a shape mismatch is a ParityError."""
    try:
        return figures_of(reference, got, masks)
    except ValueError as e:
        raise ParityError(f"onnx against torch: {e}") from e


def judge(figures: dict, precision: str) -> dict:
    """Attach the bound and a pass flag; raise for an fp32 graph that fails it."""
    bound = BOUNDS[precision]
    failures = missed(figures, asdict(bound))
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
