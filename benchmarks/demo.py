"""python -m benchmarks.demo --bundle bundles/default --out demo

The offline demo on real images: ELPV solar cells (read from the installed
package, never copied into the repository). Per cell type, known-good cells are
the references and a second set of good cells sets the NG threshold for a
false-alarm target (runtime/detect/calibration.py); a held-out mix of good and
defective cells is then inspected. Writes overlays (the known label beside the
verdict), a results.jsonl, a Markdown results table, and prints the image AUROC,
the operating point and the catch and false-alarm rates it gave.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.bundle.manifest import BundleError
from runtime.detect.calibration import calibrate_detector
from runtime.detect.detector import Detector
from runtime.detect.frames import printable, read_image
from runtime.detect.lines import FrameRef, new_run, result_line, strict_json
from runtime.detect.overlay import render

from .datasets import elpv
from .metrics import binary_metrics
from .reporting import table

SHOTS, CALIBRATION = 16, 64  # references, good cells that set the threshold (none of them tested)
TARGET = 0.05  # false-alarm rate the threshold aims at
# Solar cells are registered parts: reference_window auto (-1) finds that the references align and compares each
# patch with the references' patches around the same place; the image score is the mean of the map's top 1%
# (benchmarks/reports/accuracy-elpv/ablations.md: each choice against the others).
REGISTERED = {"reference_window": -1, "top_fraction": 0.01, "map_weight": 1.0}


def held_out(cat, per_class: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    good = [s for s in cat.test if s.label == 0]
    bad = [s for s in cat.test if s.kind == "defective"]
    picks = [good[i] for i in rng.choice(len(good), per_class, replace=False)]
    picks += [bad[i] for i in rng.choice(len(bad), per_class, replace=False)]
    return picks


def calibration_cells(cat, held: list, count: int) -> list[Path]:
    """Good cells for the threshold: the reference pool's rest, then good test cells that are not held out."""
    taken = {s.path for s in held}
    spare = [s.path for s in cat.test if s.label == 0 and s.path not in taken]
    return (cat.normal_pool[SHOTS:] + spare)[:count]


def run(
    bundle: Path,
    out: Path,
    per_class: int,
    seed: int,
    precision: str,
    target: float = TARGET,
    calibration: int = CALIBRATION,
) -> dict:
    detector = Detector.from_bundle(bundle, precision=precision, **REGISTERED)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    rows, summary = [], {}
    run_name = new_run()
    with open(out / "results.jsonl", "w", encoding="utf-8") as sink:
        for cat in elpv(seed):
            refs = detector.remember([read_image(p) for p in cat.normal_pool[:SHOTS]], colour="RGB")
            held = held_out(cat, per_class, seed)
            calib = [read_image(p) for p in calibration_cells(cat, held, calibration)]
            point, calibrated = calibrate_detector(
                detector, calib, cat.name, refs, "RGB", target, f"{len(calib)} good {cat.name} cells"
            )
            threshold = point.threshold
            labels, scores = [], []
            for i, sample in enumerate(held):
                rgb = read_image(sample.path)
                result = calibrated.detect(rgb, cat.name, refs, colour="RGB")
                stem = f"{cat.name}_{i:03d}_{sample.path.stem}"
                known = "defective" if sample.label else "good"
                cv2.imwrite(str(out / "overlays" / f"{stem}.png"), render(rgb, result, truth=known))
                cv2.imwrite(str(out / "frames" / f"{stem}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                truth = "defective" if sample.label else "good"
                where = FrameRef(
                    run_name, len(rows) + 1, time.time(), printable(sample.path.parent), printable(sample.path.name)
                )
                sink.write(strict_json(result_line(where, result) | {"truth": truth}) + "\n")
                rows.append(
                    {
                        "cell": sample.path.name,
                        "type": cat.name,
                        "truth": truth,
                        "score": result.image_score,
                        "verdict": result.label,
                        "ms": result.timings_ms.get("total", 0.0),
                        "explanation": result.to_dict().get("explanation", {}).get("text", ""),  # NG: the rules'
                    }
                )
                labels.append(sample.label)
                scores.append(result.image_score)
            summary[cat.name] = binary_metrics(labels, scores) | {"threshold": threshold}
            summary[cat.name]["operating_point"] = point.describe()
            summary[cat.name]["window"] = refs.window  # what reference_window auto chose for these references
            summary[cat.name] |= _confusion(labels, scores, threshold)
    summary["all"] = binary_metrics([r["truth"] == "defective" for r in rows], [r["score"] for r in rows])
    summary["all"] |= _rates(rows)
    (out / "results.md").write_text(_markdown(rows, summary), encoding="utf-8")
    return summary


def _rates(rows: list[dict]) -> dict:
    """Catch and false-alarm rates (percent) of the verdicts given, each type at its own threshold."""
    bad = [r["verdict"] == "NG" for r in rows if r["truth"] == "defective"]
    good = [r["verdict"] == "NG" for r in rows if r["truth"] == "good"]
    return {
        "catch_pct": 100.0 * np.mean(bad) if bad else float("nan"),
        "caught": int(sum(bad)),
        "defective": len(bad),
        "false_alarm_pct": 100.0 * np.mean(good) if good else float("nan"),
        "false_alarms": int(sum(good)),
        "good": len(good),
    }


def _confusion(labels, scores, threshold) -> dict:
    pred = np.asarray(scores) >= threshold
    truth = np.asarray(labels).astype(bool)
    return {
        "caught": int((pred & truth).sum()),
        "missed": int((~pred & truth).sum()),
        "false_alarms": int((pred & ~truth).sum()),
        "good_passed": int((~pred & ~truth).sum()),
    }


def _markdown(rows: list[dict], summary: dict) -> str:
    stats = [{"type": k, **v} for k, v in summary.items()]
    cols = ["type", "auroc", "ap", "f1_max", "threshold", "caught", "missed", "false_alarms", "good_passed"]
    return "\n".join(
        [
            "# lineside demo: ELPV solar cells",
            "",
            table(stats, cols),
            "",
            table(rows, ["cell", "type", "truth", "score", "verdict", "ms", "explanation"]),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    ap.add_argument("--out", type=Path, default=Path("demo"))
    ap.add_argument("--per-class", type=int, default=40, help="good and defective cells per type")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    ap.add_argument("--false-alarm-target", type=float, default=TARGET, help="false-alarm rate the threshold aims at")
    ap.add_argument("--calibration", type=int, default=CALIBRATION, help="good cells per type that set the threshold")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(
            args.bundle, args.out, args.per_class, args.seed, args.precision, args.false_alarm_target, args.calibration
        )
    except (BundleError, ValueError, FileNotFoundError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    for name, s in summary.items():
        extra = (
            f"  threshold {s['threshold']:.3f}: caught {s['caught']}, missed {s['missed']}, "
            f"false alarms {s['false_alarms']}"
            if "threshold" in s
            else ""
        )
        print(f"{name:5s} image AUROC {s['auroc']:.3f}  AP {s['ap']:.3f}  F1-max {s['f1_max']:.3f}{extra}")
    for name, s in summary.items():
        if "operating_point" in s:
            where = f"in place (window {s['window']})" if s["window"] else "anywhere"
            print(f"{name:5s} compared {where}; operating point: {s['operating_point']}")
    a = summary["all"]
    print(
        f"at these operating points: caught {a['caught']} of {a['defective']} defective cells "
        f"({a['catch_pct']:.1f}%), false alarms on {a['false_alarms']} of {a['good']} good cells "
        f"({a['false_alarm_pct']:.1f}%)"
    )
    print(f"overlays, results.jsonl and results.md in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
