"""python -m benchmarks.accuracy --bundle DIR --dataset KIND[:PATH] --shots 1,2,4,8,16 --draws 5

Per-category image (and, with masks, pixel and AUPRO) metrics, pooled over
categories and their unweighted mean, each the mean and standard deviation over
`--draws` random draws of references (benchmarks/draws.py: every image encoded
once, every draw scored through the runtime's own scoring), beside the
baselines on the same encodings and the same draws. `--variant` adds settings
to compare in the same run (the ablation). A bundle exported from random
weights is reported as "plumbing only": its numbers say nothing about accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from runtime.bundle.manifest import BundleError
from runtime.detect.detector import Detector

from . import draws, reporting
from .datasets import load

IMAGE_COLS = ["category", "method", "precision", "shots", "draws", "image_auroc", "image_auroc_sd", "image_ap"]
PIXEL_COLS = ["pixel_auroc", "pixel_auroc_sd", "aupro", "aupro_sd"]


def run(args) -> dict:
    categories = load(args.dataset)
    if args.categories:
        categories = [c for c in categories if c.name in args.categories]
    if args.limit:
        categories = [_limited(c, args.limit) for c in categories]
    rows, graphs, encode_ms = [], {}, {}
    ablation = args.compare or []
    for bundle in [args.bundle, *ablation]:
        label = "lineside" if not ablation else f"lineside[{Path(bundle).name}]"
        for precision in args.precisions:
            detector = detector_for(args, bundle, precision)
            graphs[f"{label} {precision}"] = {n: g["precision"] for n, g in detector.graphs().items()}
            encoded = draws.encode(detector, categories)
            encode_ms[f"{label} {precision}"] = float(np.median([m for c in encoded for m in c.encode_ms]))
            methods = {label: (draws.lineside, detector)}
            methods |= {f"{label}[{n}]": (draws.lineside, d) for n, d in draws.variants(detector, args.variant).items()}
            for shots in args.shots:
                mine = dict(methods)
                if shots and args.baselines and precision == "fp32" and bundle == args.bundle:
                    mine |= {name: (fn, detector) for name, fn in draws.BASELINES.items()}
                for row in draws.evaluate(mine, encoded, shots, args.draws if shots else 1, args.seed):
                    rows.append({**row, "precision": precision})
    return {"rows": rows, "graphs": graphs, "encode_ms": encode_ms}


def detector_for(args, bundle: Path, precision: str) -> Detector:
    """The bundle at serve's defaults, but for the precision and what --set names."""
    return Detector.from_bundle(
        bundle, precision=precision, allow_unverified_precision=args.allow_unverified_precision, **settings(args.set)
    )


def _limited(cat, limit: int):
    """At most `limit` test samples of each kind (good, each defect kind, uncertain), in order."""
    from dataclasses import replace

    seen: dict[str, int] = {}
    kept = []
    for sample in cat.test:
        seen[sample.kind] = seen.get(sample.kind, 0) + 1
        if seen[sample.kind] <= limit:
            kept.append(sample)
    return replace(cat, test=kept)


def settings(pairs: list[str] | None) -> dict:
    """KEY=VALUE detector settings (as on serve's command line) -> typed values."""
    from runtime.options import convert

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: write KEY=VALUE, e.g. reference_window=-1")
        out[key] = convert(key, value, "--set")
    return out


def markdown(args, result: dict, bundle, plumbing: bool) -> str:
    rows = result["rows"]
    has_pixels = any("pixel_auroc" in r for r in rows)
    lines = [f"# Accuracy: {args.dataset} with bundle `{bundle.bundle_id}` ({bundle.manifest.profile})", ""]
    if plumbing:
        lines += [
            "**Plumbing only:** this bundle was exported from random weights. These numbers",
            "exercise the pipeline and say nothing about accuracy.",
            "",
        ]
    lines += [
        f"Shots (normal references per category): {', '.join(map(str, args.shots))}; each figure the mean over "
        f"{args.draws} random draws of references (seed {args.seed}), `_sd` its standard deviation between draws. "
        f"Detector settings beyond the defaults: {', '.join(args.set or []) or 'none'}"
        + (f"; variants: {'; '.join(args.variant)}" if args.variant else "")
        + "."
        + (f" At most {args.limit} test samples of each kind per category (--limit)." if args.limit else ""),
        "Image encoder p50 per image: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in result["encode_ms"].items())
        + ". Pixel metrics are of the map before SAM refinement; image scores never depend on SAM.",
        "",
        "Each graph's precision as it ran here (a variant outside its parity bound is refused unless "
        "--allow-unverified-precision):",
        "",
        *[f"- {how}: " + ", ".join(f"{n} {p}" for n, p in ran.items()) for how, ran in result["graphs"].items()],
        "",
    ]
    lines += _against_peer(rows)
    lines += ["## Image level", "", reporting.table(rows, IMAGE_COLS), ""]
    if has_pixels:
        lines += [
            "## Pixel level",
            "",
            "`aupro`: exact, FPR up to 0.3, divided by 0.3.",
            "",
            reporting.table(
                [r for r in rows if "pixel_auroc" in r], ["category", "method", "precision", "shots"] + PIXEL_COLS
            ),
            "",
        ]
    lines += _quantisation(rows)
    lines += ["![per category](categories.png)", ""]
    return "\n".join(lines)


PEER = "patchcore_same_encoder"


def _against_peer(rows: list[dict]) -> list[str]:
    """lineside minus the same-encoder PatchCore, per category and shot count, with the draws' spreads."""
    peer = {(r["category"], r["shots"]): r for r in rows if r["method"] == PEER}
    out = []
    for r in rows:
        p = peer.get((r["category"], r["shots"]))
        if r["method"] != "lineside" or r["precision"] != "fp32" or p is None:
            continue
        entry = {"category": r["category"], "shots": r["shots"]}
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            if key in r and key in p:
                entry[f"{key} lineside"] = f"{r[key]:.3f} ± {r[key + '_sd']:.3f}"
                entry[f"{key} peer"] = f"{p[key]:.3f} ± {p[key + '_sd']:.3f}"
                entry[f"Δ {key}"] = r[key] - p[key]
        out.append(entry)
    if not out:
        return []
    return [
        f"## Against the peer on the same encoder ({PEER})",
        "",
        "Δ below 0: lineside's default is worse than the plain nearest-neighbour search by that much.",
        "",
        reporting.table(out, list(dict.fromkeys(k for e in out for k in e))),
        "",
    ]


def _quantisation(rows: list[dict]) -> list[str]:
    precisions = sorted({r["precision"] for r in rows if r["method"] == "lineside"})
    if len(precisions) < 2 or "fp32" not in precisions:
        return []
    base = {(r["category"], r["shots"]): r for r in rows if r["method"] == "lineside" and r["precision"] == "fp32"}
    out = []
    for r in rows:
        if r["method"] != "lineside" or r["precision"] == "fp32" or (r["category"], r["shots"]) not in base:
            continue
        b = base[(r["category"], r["shots"])]
        entry = {"category": r["category"], "shots": r["shots"], "precision": r["precision"]}
        entry["Δ image AUROC"] = r["image_auroc"] - b["image_auroc"]
        if "pixel_auroc" in r:
            entry |= {"Δ pixel AUROC": r["pixel_auroc"] - b["pixel_auroc"], "Δ AUPRO": r["aupro"] - b["aupro"]}
        out.append(entry)
    cols = list(out[0]) if out else []
    return ["## Quantisation against fp32 (same run)", "", reporting.table(out, cols), ""] if out else []


def plots(out: Path, result: dict) -> None:
    most = max(r["shots"] for r in result["rows"])  # the plot shows the largest reference set
    rows = [r for r in result["rows"] if r["precision"] == "fp32" and r["shots"] == most and "(" not in r["category"]]
    cats = sorted({r["category"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    series = {
        m: [
            next((r["image_auroc"] for r in rows if r["category"] == c and r["method"] == m), float("nan"))
            for c in cats
        ]
        for m in methods
    }
    reporting.bar_plot(out / "categories.png", cats, series, "image AUROC", f"per category (fp32, {most} shots)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", required=True, help="elpv, synthetic:PATH or mvtec:PATH")
    ap.add_argument(
        "--shots",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[4],
        help="normal references per category, or a comma list (1,4,16); 0: zero-shot",
    )
    ap.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a detector setting for this run (repeatable), e.g. reference_window=-1 top_fraction=0.01",
    )
    ap.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32"])
    ap.add_argument("--categories", nargs="*", help="only these categories")
    ap.add_argument("--limit", type=int, help="at most N test samples of each kind per category (quick runs)")
    ap.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the same-encoder PatchCore, global-feature and raw-pixel nearest-reference baselines",
    )
    ap.add_argument("--draws", type=int, default=5, help="random draws of references per shot count")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws")
    ap.add_argument(
        "--variant",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="settings compared in the same run on the same draws (repeatable), e.g. anywhere:reference_window=0",
    )
    ap.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="BUNDLE",
        help="ablation: more bundles in the same run (e.g. exported with --no-vv or other --taps)",
    )
    ap.add_argument(
        "--allow-unverified-precision",
        action="store_true",
        help="measure fp16/int8 graphs even when outside their parity bound (refused otherwise)",
    )
    ap.add_argument("--out", type=Path, help="report folder (default benchmarks/reports/accuracy-<dataset>)")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lineside").setLevel(logging.WARNING)
    logging.getLogger("lineside.bench").setLevel(logging.INFO)
    args = parser().parse_args(argv)
    try:
        from runtime.bundle.loader import Bundle

        bundle = Bundle.open(args.bundle)
        result = run(args)
    except (BundleError, ValueError, FileNotFoundError) as e:
        print(f"accuracy failed: {e}", file=sys.stderr)
        return 1
    plumbing = reporting.random_weights(bundle)
    out = args.out or reporting.REPORTS / f"accuracy-{args.dataset.split(':')[0]}"
    out.mkdir(parents=True, exist_ok=True)
    plots(out, result)
    data = {
        "dataset": args.dataset,
        "bundle_id": bundle.bundle_id,
        "profile": bundle.manifest.profile,
        "plumbing_only": plumbing,
        "shots": ", ".join(map(str, args.shots)),
        "machine": reporting.machine(),
        "draws": args.draws,
        "seed": args.seed,
        "variants": args.variant or [],
        "rows": result["rows"],
        "graphs": result["graphs"],
        "encode_ms_p50": result["encode_ms"],
    }
    _, md = reporting.write(out, "report", data, markdown(args, result, bundle, plumbing))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
