"""python -m benchmarks.accuracy --bundle DIR --dataset KIND[:PATH]

Per-category image (and, with masks, pixel and AUPRO) metrics and their
unweighted mean, for each precision asked, beside simple baselines run in the
same process on the same references. Ablations are flags: --shots, --no-sam,
--generic-prompts. A bundle exported from random weights is reported as
"plumbing only": its numbers say nothing about accuracy.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from runtime.bundle.manifest import BundleError
from runtime.detect.detector import Detector

from . import reporting
from .datasets import load
from .evaluate import Scored, evaluate_category

IMAGE_COLS = ["category", "method", "precision", "shots", "n", "image_auroc", "image_ap", "image_f1_max"]
PIXEL_COLS = ["pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupro_binned200"]


def run(args) -> dict:
    categories = load(args.dataset)
    if args.categories:
        categories = [c for c in categories if c.name in args.categories]
    rows, curves, graphs = [], {}, {}
    ablation = args.compare or []
    for bundle in [args.bundle, *ablation]:
        label = "lineside" if not ablation else f"lineside[{Path(bundle).name}]"
        for precision in args.precisions:
            detector = Detector.from_bundle(
                bundle,
                precision=precision,
                use_sam=not args.no_sam,
                prompt_dir=args.prompt_dir,
                sam_gate=args.sam_gate,
                allow_unverified_precision=args.allow_unverified_precision,
                **settings(args.set),
            )
            graphs[f"{label} {precision}"] = {n: g["precision"] for n, g in detector.graphs().items()}
            for shots in args.shots:
                baselines = args.baselines and precision == "fp32" and bundle == args.bundle
                _evaluate(detector, categories, label, precision, shots, baselines, args, rows, curves)
    rows += _means(rows)
    return {"rows": rows, "curves": curves, "graphs": graphs}


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


def _evaluate(detector, categories, label, precision, shots, baselines, args, rows, curves) -> None:
    pooled: dict[str, Scored] = {}
    for cat in categories:
        logging.getLogger("lineside.bench").info(
            "%s %s %d shots %s: %d samples", label, precision, shots, cat.name, len(cat.test)
        )
        scored = evaluate_category(detector, cat, shots, args.limit, baselines)
        for method, s in scored.items():
            method = label if method == "lineside" else method
            head = {"method": method, "precision": precision, "shots": shots}
            rows.append({"category": cat.name, **head, **s.metrics()})
            curves[f"{cat.name} {method} {precision} {shots}-shot"] = (s.labels, s.scores)
            if "uncertain" in s.kinds:
                rows.append(
                    {"category": f"{cat.name} (uncertain vs normal)", **head, **s.metrics(exclude=("defective",))}
                )
            _pool(pooled.setdefault(method, Scored()), s)
    for method, s in pooled.items():
        if len(categories) > 1:
            head = {"method": method, "precision": precision, "shots": shots}
            rows.append({"category": "all (pooled)", **head, **s.metrics()})


def _pool(into: Scored, s: Scored) -> None:
    into.labels += s.labels
    into.kinds += s.kinds
    into.scores += s.scores
    into.ms += s.ms
    into.maps += s.maps
    into.masks += s.masks


def _means(rows: list[dict]) -> list[dict]:
    """Unweighted mean over real categories, per method, precision and shots."""
    out = []
    keys = {(r["method"], r["precision"], r["shots"]) for r in rows}
    for method, precision, shots in sorted(keys):
        mine = [
            r
            for r in rows
            if (r["method"], r["precision"], r["shots"]) == (method, precision, shots)
            and not r["category"].startswith("all")
            and "(" not in r["category"]
        ]
        if len(mine) < 2:
            continue
        head = {"category": "mean", "method": method, "precision": precision, "shots": shots}
        mean = head | {"n": sum(r["n"] for r in mine)}
        for col in IMAGE_COLS[4:] + PIXEL_COLS + ["ms_p50"]:
            values = [r[col] for r in mine if col in r and not math.isnan(r[col])]
            mean[col] = float(np.mean(values)) if values else float("nan")
        out.append(mean)
    return out


def markdown(args, result: dict, bundle, plumbing: bool) -> str:
    rows = result["rows"]
    has_pixels = any(not math.isnan(r.get("pixel_auroc", math.nan)) for r in rows)
    lines = [f"# Accuracy: {args.dataset} with bundle `{bundle.bundle_id}` ({bundle.manifest.profile})", ""]
    if plumbing:
        lines += [
            "**Plumbing only:** this bundle was exported from random weights. These numbers",
            "exercise the pipeline and say nothing about accuracy.",
            "",
        ]
    lines += [
        f"Shots (normal references per category): {', '.join(map(str, args.shots))}. "
        f"SAM: {'off' if args.no_sam else 'on if present'}. "
        f"Detector settings beyond the defaults: {', '.join(args.set or []) or 'none'}."
        + (f" At most {args.limit} test samples per category (--limit)." if args.limit else ""),
        "",
        "Each graph's precision as it ran here (a variant outside its parity bound is refused unless "
        "--allow-unverified-precision):",
        "",
        *[f"- {how}: " + ", ".join(f"{n} {p}" for n, p in ran.items()) for how, ran in result["graphs"].items()],
        "",
        "## Image level",
        "",
        reporting.table(rows, IMAGE_COLS + ["ms_p50"]),
        "",
    ]
    if has_pixels:
        lines += [
            "## Pixel level",
            "",
            "`aupro`: exact, FPR up to 0.3, divided by 0.3. `aupro_binned200`: the",
            "200-threshold, FPR-rescaled variant of AnomalyCLIP-family code (not comparable with `aupro`).",
            "",
            reporting.table(
                [r for r in rows if not math.isnan(r.get("pixel_auroc", math.nan))],
                ["category", "method", "precision", "shots"] + PIXEL_COLS,
            ),
            "",
        ]
    lines += _quantisation(rows)
    lines += ["![ROC](roc.png)", "", "![per category](categories.png)", ""]
    return "\n".join(lines)


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
        entry = {
            "category": r["category"],
            "shots": r["shots"],
            "precision": r["precision"],
            "speed-up (p50 total ms)": b["ms_p50"] / r["ms_p50"] if r["ms_p50"] else float("nan"),
            "Δ image AUROC": r["image_auroc"] - b["image_auroc"],
        }
        if "pixel_auroc" in r:
            entry |= {"Δ pixel AUROC": r["pixel_auroc"] - b["pixel_auroc"], "Δ AUPRO": r["aupro"] - b["aupro"]}
        out.append(entry)
    cols = list(out[0]) if out else []
    return ["## Quantisation against fp32 (same run)", "", reporting.table(out, cols), ""] if out else []


def plots(out: Path, result: dict) -> None:
    most = max(r["shots"] for r in result["rows"])  # the plots show the largest reference set
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
    fp32 = {k: v for k, v in result["curves"].items() if k.endswith(f"fp32 {most}-shot")}
    reporting.roc_plot(out / "roc.png", fp32, f"image-level ROC (fp32, {most} shots)")


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
    ap.add_argument("--limit", type=int, help="at most N test samples per category (quick runs)")
    ap.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raw-pixel and global-feature nearest-reference baselines",
    )
    ap.add_argument("--no-sam", action="store_true", help="ablation: contours instead of SAM")
    ap.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="BUNDLE",
        help="ablation: more bundles in the same run (e.g. exported with --no-vv or other --taps)",
    )
    ap.add_argument("--sam-gate", type=float, default=0.4)
    ap.add_argument(
        "--allow-unverified-precision",
        action="store_true",
        help="measure fp16/int8 graphs even when outside their parity bound (refused otherwise)",
    )
    ap.add_argument("--prompt-dir", type=Path, help="prompt banks (ablation: an empty folder = generic prompts)")
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
        "rows": result["rows"],
        "graphs": result["graphs"],
    }
    _, md = reporting.write(out, "report", data, markdown(args, result, bundle, plumbing))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
