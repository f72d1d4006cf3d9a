"""Anomaly-detection metrics: image and pixel AUROC / AP / F1-max, and AUPRO; latency percentiles.

AUPRO here is exact: every distinct score is a threshold, ground-truth regions
are 8-connected components pooled over all images of a category, the per-region
overlap curve is integrated over the false-positive rate up to 0.3 and divided
by 0.3. `aupro_binned` is the variant AnomalyCLIP-family code reports (200
evenly spaced thresholds, FPR rescaled to 0..1 after the cut), kept apart and
labelled so that numbers are compared like for like.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

EIGHT = np.ones((3, 3), dtype=bool)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def binary_metrics(labels, scores) -> dict[str, float]:
    """AUROC, AP and F1-max; NaN when only one class is present."""
    labels, scores = np.asarray(labels).ravel().astype(int), np.asarray(scores, np.float64).ravel()
    if labels.min() == labels.max():
        return {"auroc": float("nan"), "ap": float("nan"), "f1_max": float("nan")}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "f1_max": f1_max(labels, scores),
    }


def _regions(masks: list[np.ndarray]) -> np.ndarray:
    """Per pixel of all images: 0 for normal, k >= 1 for the k-th ground-truth region."""
    out, offset = [], 0
    for mask in masks:
        labelled, count = ndimage.label(np.asarray(mask, bool), structure=EIGHT)
        out.append(np.where(labelled > 0, labelled + offset, 0).ravel())
        offset += count
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def pro_curve(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score, thresholds descending, starting at (0, 0)."""
    region = _regions(masks)
    scores = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps])
    normal = region == 0
    n_normal = normal.sum()
    n_regions = int(region.max()) if region.size else 0
    if n_normal == 0 or n_regions == 0:
        raise ValueError("AUPRO needs both normal pixels and at least one ground-truth region")
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
    fpr_step = np.where(normal, 1.0 / n_normal, 0.0)
    pro_step = np.where(normal, 0.0, 1.0 / (n_regions * sizes[region]))
    order = np.argsort(-scores, kind="stable")
    fpr = np.cumsum(fpr_step[order])
    pro = np.cumsum(pro_step[order])
    ranked = scores[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold takes all tied pixels at once
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Exact area under the PRO curve up to `fpr_limit`, divided by `fpr_limit`."""
    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit and keep.sum() < len(fpr):  # interpolate the curve at the limit
        nxt = keep.sum()
        t = (fpr_limit - fpr[nxt - 1]) / (fpr[nxt] - fpr[nxt - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, pro[nxt - 1] + t * (pro[nxt] - pro[nxt - 1])]
    return float(np.trapezoid(y, x) / fpr_limit)


def aupro_binned(masks: list[np.ndarray], maps: list[np.ndarray], steps: int = 200, fpr_limit: float = 0.3) -> float:
    """The AnomalyCLIP-family figure: `steps` thresholds, FPR < limit, FPR rescaled to 0..1."""
    region = _regions(masks)
    scores = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps])
    normal = region == 0
    sizes = np.bincount(region)
    fprs, pros = [], []
    for threshold in np.linspace(scores.min(), scores.max(), steps):
        hit = scores > threshold
        fprs.append(hit[normal].sum() / normal.sum())
        per_region = np.bincount(region[hit], minlength=len(sizes))[1:] / sizes[1:]
        pros.append(per_region.mean())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    x, y = fprs[keep], pros[keep]
    if x.max() == 0:  # every kept threshold has no false positive: the rescaling is undefined
        return float("nan")
    x = x / x.max()
    order = np.argsort(x)
    return float(np.trapezoid(y[order], x[order]))


def pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC / AP / F1-max over all pixels pooled, plus both AUPROs."""
    labels = np.concatenate([np.asarray(m, bool).ravel() for m in masks])
    scores = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    out = {f"pixel_{k}": v for k, v in binary_metrics(labels, scores).items()}
    has_regions = labels.any() and not labels.all()
    out["aupro"] = aupro(masks, maps) if has_regions else float("nan")
    out["aupro_binned200"] = aupro_binned(masks, maps) if has_regions else float("nan")
    return out


def pixel_auroc_aupro(masks: list[np.ndarray], maps: list[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC and the exact AUPRO alone: what a many-draw report needs, without the binned AUPRO's 200
    passes and the AP and F1 curves over every pixel (the most of pixel_metrics' time)."""
    from sklearn.metrics import roc_auc_score

    labels = np.concatenate([np.asarray(m, bool).ravel() for m in masks])
    if not labels.any() or labels.all():
        return {"pixel_auroc": float("nan"), "aupro": float("nan")}
    scores = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    return {"pixel_auroc": float(roc_auc_score(labels, scores)), "aupro": aupro(masks, maps)}


def percentiles(values: list[float]) -> dict:
    """p50 / p90 / p99 and the count of a list of milliseconds."""
    v = np.asarray(values)
    return {
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "p99": float(np.percentile(v, 99)),
        "n": len(values),
    }


def stage_table(results) -> dict:
    """Stage -> percentiles of `Result.timings_ms` over many results."""
    stages: dict[str, list[float]] = {}
    for r in results:
        for k, v in r.timings_ms.items():
            stages.setdefault(k, []).append(v)
    return {k: percentiles(v) for k, v in stages.items()}
