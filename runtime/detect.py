"""python -m runtime.detect INPUT... --bundle DIR --category NAME --out DIR

Batch inspection: every input image gets one line in OUT/results.jsonl (ERROR
for unreadable files, never skipped), an overlay in OUT/overlays/ and its map
and masks as PNG in OUT/maps/. Detector settings are flags (or --config FILE).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from .config import add_arguments, from_sources
from .detector import Detector
from .images import list_images, read_image
from .manifest import BundleError
from .overlay import render
from .settings import DetectorSettings

log = logging.getLogger("lineside.detect")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.detect", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--category", required=True, help="what the part is, e.g. screw or metal_nut")
    ap.add_argument("--references", type=Path, help="folder of known-good images (few-shot branch)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, help="JSON file of detector settings")
    add_arguments(ap, DetectorSettings)
    return ap


def run(args) -> tuple[dict[str, int], dict[str, float]]:
    """Inspect every input; (counts per label, median milliseconds per stage)."""
    settings = from_sources(DetectorSettings, args.config, args)
    detector = Detector.from_bundle(args.bundle, settings)
    refs = [read_image(p) for p in list_images([args.references])] if args.references else None
    paths = list_images(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overlays").mkdir(exist_ok=True)
    counts, stages = {"OK": 0, "NG": 0, "ERROR": 0}, {}
    with open(args.out / "results.jsonl", "a", encoding="utf-8") as sink:
        for index, path in enumerate(tqdm(paths, desc="inspecting", unit="img", file=sys.stderr)):
            stem = f"{index:05d}_{path.stem}"
            try:
                frame = read_image(path)
                result = detector.detect(frame, args.category, refs, colour="RGB")
                line = result.save(args.out / "maps", stem)
                cv2.imwrite(str(args.out / "overlays" / f"{stem}.png"), render(frame, result))
                for stage, ms in result.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)
            except (ValueError, FileNotFoundError) as e:
                line = {"label": "ERROR", "error": str(e)}
            counts[line["label"]] += 1
            sink.write(json.dumps({"input": str(path), **line}) + "\n")
            sink.flush()
    return counts, {stage: statistics.median(ms) for stage, ms in stages.items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        counts, p50 = run(args)
    except (BundleError, ValueError, FileNotFoundError) as e:
        print(f"detect failed: {e}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in counts.items()), f"-> {args.out / 'results.jsonl'}")
    if p50:
        print("p50 ms per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in p50.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
