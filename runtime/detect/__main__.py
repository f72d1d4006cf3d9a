"""python -m runtime.detect INPUT... --bundle DIR --category NAME --out DIR

Batch inspection: every input image gets one line in OUT/results.jsonl (ERROR
for unreadable files, never skipped), an overlay in OUT/overlays/ and its map
and masks as PNG in OUT/maps/. Every job and detector setting is a flag, a
--config key and a LINESIDE_* variable (runtime/settings.py).
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..bundle.manifest import BundleError
from ..options import add_arguments, load
from .calibration import calibrate_detector
from .detector import Detector
from .frames import list_images, printable, read_frame, to_rgb_uint8, write_image
from .lines import FrameRef, new_run, result_line, strict_json
from .overlay import render

log = logging.getLogger("lineside.detect")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.detect", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    ap.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, overlays and maps")
    add_arguments(ap, "job", "detector")
    return ap


def run(args) -> tuple[dict[str, int], dict[str, float]]:
    """Inspect every input; (counts per label, median milliseconds per stage)."""
    config = load(args)
    job, settings = config.job, config.detector
    detector = Detector.from_bundle(job.bundle, settings)
    bits, min_side, max_pixels = settings.input_bits, settings.min_frame_side, settings.max_image_pixels
    read = lambda p: to_rgb_uint8(read_frame(p, max_pixels), "BGR", bits, min_side)  # noqa: E731
    refs = [read(p) for p in list_images([job.references])] if job.references else None
    refs = detector.remember(refs, colour="RGB") if refs else None  # encoded once, not per image
    if job.calibrate:  # the threshold from known-good images, for the false-alarm target
        good = [read(p) for p in list_images([job.calibrate])]
        point, detector = calibrate_detector(
            detector,
            good,
            job.category,
            refs,
            "RGB",
            job.false_alarm_target,
            f"calibrate {job.calibrate}",
            job.false_alarm_mode,
            job.false_alarm_confidence,
        )
        print(f"operating point: {point.describe()}", file=sys.stderr)
    paths = list_images(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overlays").mkdir(exist_ok=True)
    counts, stages = {"OK": 0, "NG": 0, "ERROR": 0}, {}
    run_name = new_run()
    with (
        open(args.out / "results.jsonl", "a", encoding="utf-8") as sink,
        tqdm(total=len(paths), desc="inspecting", unit="img", file=sys.stderr) as progress,
    ):
        for index, frame, result in scored(detector, paths, read, job.category, refs):
            path = paths[index]
            stem = f"{index:05d}_" + re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)
            # Lines as serve's folder source writes them: source the folder, file the name in it.
            where = FrameRef(run_name, index + 1, time.time(), printable(path.parent), printable(path.name))
            if frame is None:  # unreadable: its ERROR line alone
                line = result_line(where, result)
            else:
                line = result_line(where, result, result.save(args.out / "maps", stem))
                write_image(args.out / "overlays" / f"{stem}.png", render(frame, result))
                for stage, ms in result.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)
            counts[line["label"]] += 1
            sink.write(strict_json(line) + "\n")
            sink.flush()
            progress.update()
    return counts, {stage: statistics.median(ms) for stage, ms in stages.items()}


def scored(detector: Detector, paths: list[Path], read, category: str, refs):
    """(index, RGB frame or None when unreadable, Result) for every path, in order. `detector.concurrency`
    frames are scored at once (detect_batch): a Triton server batches them, local sessions take one."""
    for start in range(0, len(paths), detector.concurrency):
        frames, errors = {}, {}
        for index in range(start, min(start + detector.concurrency, len(paths))):
            try:
                frames[index] = read(paths[index])
            except (ValueError, OSError) as e:  # unreadable, not a regular file, too large, too small
                errors[index] = detector.error_result(str(e), category)
        results = dict(zip(frames, detector.detect_batch(list(frames.values()), category, refs, "RGB")))
        for index in sorted([*frames, *errors]):
            yield index, frames.get(index), results.get(index) or errors[index]


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
