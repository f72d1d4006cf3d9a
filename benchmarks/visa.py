"""python -m benchmarks.visa --root VisA --csv VisA/split_csv/1cls.csv --out data/visa

VisA ships its images in per-object Data/Images/{Normal,Anomaly} folders and its
split in a CSV (object, split, label, image, mask). This writes the MVTec layout
the loader reads: {object}/train/good, test/good, test/anomaly and
ground_truth/anomaly/{stem}_mask.png (VisA masks hold region ids; any non-zero
pixel is anomalous). Images are hard-linked where possible, never altered.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import cv2


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def convert(root: Path, split_csv: Path, out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(split_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    needed = {"object", "split", "label", "image", "mask"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{split_csv}: expected columns {sorted(needed)}")
    for row in rows:
        image = root / row["image"]
        if not image.is_file():
            raise FileNotFoundError(f"{image} (listed in {split_csv}) does not exist")
        normal = row["label"].strip().lower() == "normal"
        if row["split"] == "train":
            if not normal:
                continue  # the few-shot pool holds known-good parts only
            target = out / row["object"] / "train" / "good" / image.name
        else:
            target = out / row["object"] / "test" / ("good" if normal else "anomaly") / image.name
        _place(image, target)
        if not normal and row["split"] != "train":
            mask = cv2.imread(str(root / row["mask"]), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"unreadable mask {root / row['mask']}")
            gt = out / row["object"] / "ground_truth" / "anomaly" / f"{image.stem}_mask.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt), (mask > 0).astype("uint8") * 255)
        key = f"{row['object']}/{row['split']}/{'normal' if normal else 'anomaly'}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.visa", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        counts = convert(args.root, args.csv, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"visa conversion failed: {e}", file=sys.stderr)
        return 1
    for key, n in sorted(counts.items()):
        print(f"{key}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
