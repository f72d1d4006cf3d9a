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
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.bundle.manifest import BundleError
from runtime.detect.calibration import MODES, calibrate, calibrate_detector
from runtime.detect.detector import Detector
from runtime.detect.frames import printable, read_image
from runtime.detect.lines import FrameRef, new_run, result_line, strict_json
from runtime.detect.overlay import render
from runtime.detect.references import ReferenceMemory

from . import reporting
from .datasets import elpv
from .metrics import binary_metrics
from .reporting import table

log = logging.getLogger("lineside.bench")
SHOTS, CALIBRATION = 16, 64  # references, good cells that set the threshold (none of them tested)
TARGET = 0.05  # false-alarm rate the threshold aims at
# The detector runs with serve's and detect's defaults, nothing set here (tests/test_defaults.py): solar cells
# are registered parts, which reference_window auto (the default) finds for itself.
DRAWS_REPORT = reporting.REPORTS / "demo-draws" / "draws.json"  # the mean over draws (--draws N) that the demo prints


def demo_detector(bundle: Path, precision: str) -> Detector:
    """The demo's detector: the bundle at serve's defaults, only the precision chosen."""
    return Detector.from_bundle(bundle, precision=precision)


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
    mode: str = "expected",
) -> dict:
    detector = demo_detector(bundle, precision)
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
                detector, calib, cat.name, refs, "RGB", target, f"{len(calib)} good {cat.name} cells", mode
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
    summary["all"] |= _rates(rows) | {"bundle_id": detector.bundle_id}
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


def run_draws(bundle: Path, draws: int, seed: int, precision: str, target: float, calibration: int, per_class: int):
    """The demo's protocol over `draws` random draws (seeds seed, seed + 1, ...), in both false-alarm modes.

    Every ELPV cell is encoded once and each draw scored through Detector.score_encoded (the scoring detect
    runs), so twenty draws cost about one. Per draw and cell type: 16 references and `calibration` good cells
    drawn as in the single run, the threshold set from the calibration cells' scores in each mode, then the
    catch rate on `per_class` defective cells and the false-alarm rate on every good cell left (hundreds,
    so the measured rate is close to the rate that threshold has)."""
    detector = demo_detector(bundle, precision)
    cache: dict[Path, tuple] = {}

    def encoded(path: Path) -> tuple:
        if path not in cache:
            cache[path] = detector.encoder.encode(read_image(path))
        return cache[path]

    rows = []
    for d in range(draws):
        counts = {m: {"caught": 0, "defective": 0, "alarms": 0, "good": 0} for m in MODES}
        for cat in elpv(seed + d):
            refs = [encoded(p) for p in cat.normal_pool[:SHOTS]]
            memory = ReferenceMemory.from_encoded(
                f"draw {d}", detector.encoder.identity, refs, *_memory_shape(detector)
            )

            def score(path: Path, name=cat.name, memory=memory) -> float:
                return detector.score_encoded(*encoded(path), name, memory)[0]

            held = held_out(cat, per_class, seed + d)
            calib = calibration_cells(cat, held, calibration)
            taken = set(calib)
            bad = [score(s.path) for s in held if s.label]
            good = [score(s.path) for s in cat.test if s.label == 0 and s.path not in taken]
            calib_scores = [score(p) for p in calib]
            for m in MODES:
                threshold = calibrate(calib_scores, target, mode=m).threshold
                counts[m]["caught"] += sum(v >= threshold for v in bad)
                counts[m]["defective"] += len(bad)
                counts[m]["alarms"] += sum(v >= threshold for v in good)
                counts[m]["good"] += len(good)
        for m, c in counts.items():
            rows.append(
                {
                    "draw": d + 1,
                    "seed": seed + d,
                    "mode": m,
                    "catch_pct": 100.0 * c["caught"] / c["defective"],
                    "false_alarm_pct": 100.0 * c["alarms"] / c["good"],
                    "good_tested": c["good"],
                }
            )
        log.info("draw %d of %d: %s", d + 1, draws, [f"{r['mode']} {r['catch_pct']:.1f}%" for r in rows[-2:]])
    summary = {}
    for m in MODES:
        mine = [r for r in rows if r["mode"] == m]
        summary[m] = {
            "catch_pct_mean": float(np.mean([r["catch_pct"] for r in mine])),
            "catch_pct_sd": float(np.std([r["catch_pct"] for r in mine], ddof=1)) if len(mine) > 1 else 0.0,
            "false_alarm_pct_mean": float(np.mean([r["false_alarm_pct"] for r in mine])),
            "false_alarm_pct_max": float(np.max([r["false_alarm_pct"] for r in mine])),
            "draws_within_target": int(sum(r["false_alarm_pct"] <= 100 * target for r in mine)),
            "draws": len(mine),
        }
    return {"bundle_id": detector.bundle_id, "target": target, "calibration": calibration, "rows": rows} | {
        "summary": summary
    }


def _memory_shape(detector: Detector) -> tuple:
    s = detector.settings
    return s.coreset_ratio, s.nn_index, s.reference_window, detector.encoder.grid


def _draws_markdown(data: dict, per_class: int) -> str:
    target = 100 * data["target"]
    summary = [{"mode": m, **v} for m, v in data["summary"].items()]
    return "\n".join(
        [
            f"# Demo over {len(data['rows']) // len(MODES)} draws: ELPV, bundle `{data['bundle_id']}`",
            "",
            f"Per draw and cell type: {SHOTS} references, {data['calibration']} good calibration cells, "
            f"{per_class} defective cells; false alarms counted on every good cell left. Target {target:g}% "
            "false alarms; guarantee mode: at most the target with 95% confidence.",
            "",
            "`python -m benchmarks.demo --bundle BUNDLE --draws N` (both modes from the same scores).",
            "",
            table(
                summary,
                [
                    "mode",
                    "catch_pct_mean",
                    "catch_pct_sd",
                    "false_alarm_pct_mean",
                    "false_alarm_pct_max",
                    "draws_within_target",
                    "draws",
                ],
            ),
            "",
            table(data["rows"], ["draw", "seed", "mode", "catch_pct", "false_alarm_pct", "good_tested"]),
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
    ap.add_argument(
        "--false-alarm-mode",
        default="expected",
        choices=MODES,
        help="expected: the target on average; guarantee: at most the target with 95%% confidence (59 cells at 5%%)",
    )
    ap.add_argument(
        "--draws",
        type=int,
        default=0,
        help="instead of one inspected draw: N random draws in both modes, a report in benchmarks/reports/demo-draws",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.draws:
        logging.getLogger("lineside.bench").setLevel(logging.INFO)
    try:
        if args.draws:
            data = run_draws(
                args.bundle,
                args.draws,
                args.seed,
                args.precision,
                args.false_alarm_target,
                args.calibration,
                args.per_class,
            )
            md = _draws_markdown(data, args.per_class)
            reporting.write(DRAWS_REPORT.parent, "draws", data, md)
            print(md)
            return 0
        summary = run(
            args.bundle,
            args.out,
            args.per_class,
            args.seed,
            args.precision,
            args.false_alarm_target,
            args.calibration,
            args.false_alarm_mode,
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
    _print_draws_mean(summary["all"]["bundle_id"], args.false_alarm_mode)
    print(f"overlays, results.jsonl and results.md in {args.out}")
    return 0


def _print_draws_mean(bundle_id: str | None, mode: str) -> None:
    """One draw is one draw: beside it, the mean over many draws from the committed report, for this bundle."""
    try:
        data = json.loads(DRAWS_REPORT.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if data.get("bundle_id") != bundle_id or mode not in data.get("summary", {}):
        print(f"(no report over draws for this bundle: python -m benchmarks.demo --draws 20 writes {DRAWS_REPORT})")
        return
    m = data["summary"][mode]
    print(
        f"over {m['draws']} draws ({DRAWS_REPORT}), {mode} mode: caught {m['catch_pct_mean']:.1f}% "
        f"(sd {m['catch_pct_sd']:.1f}), false alarms {m['false_alarm_pct_mean']:.1f}% on average, at or below "
        f"the target in {m['draws_within_target']} of {m['draws']} draws"
    )


if __name__ == "__main__":
    sys.exit(main())
