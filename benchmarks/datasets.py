"""Evaluation sets as categories of (normal pool, test samples).

* `mvtec:PATH`: the MVTec AD layout ({category}/train/good, test/{kind},
  ground_truth/{kind}/*_mask.png); VisA, BTAD, MPDD and the synthetic set use it too.
* `synthetic:PATH`: benchmarks.synthetic's output (generated first if PATH is empty).
* `elpv`: the ELPV solar cells from the PyPI package `elpv-dataset` (read in place,
  never copied: CC BY-NC-SA). Image-level labels only. Per cell type (mono, poly):
  a seeded pool of functional cells serves as references, the rest are tested;
  cells rated 1/3 or 2/3 defective are marked `uncertain` and reported apart.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime.detect.frames import IMAGE_SUFFIXES

ELPV_POOL = 32  # functional cells per type set aside as the reference pool


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 defective
    mask: Path | None = None
    kind: str = "good"  # defect type, "good", or "uncertain"


@dataclass
class Category:
    name: str
    normal_pool: list[Path]
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = False


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def mvtec(root: Path) -> list[Category]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    categories = []
    for cat_dir in sorted(p for p in root.iterdir() if (p / "test").is_dir()):
        cat = Category(cat_dir.name, _images(cat_dir / "train" / "good"), has_masks=(cat_dir / "ground_truth").is_dir())
        for kind_dir in sorted(p for p in (cat_dir / "test").iterdir() if p.is_dir()):
            for path in _images(kind_dir):
                mask = cat_dir / "ground_truth" / kind_dir.name / f"{path.stem}_mask.png"
                good = kind_dir.name == "good"
                cat.test.append(
                    Sample(path, 0 if good else 1, None if good or not mask.is_file() else mask, kind_dir.name)
                )
        categories.append(cat)
    if not categories:
        raise ValueError(f"{root} holds no category in the MVTec layout ({{category}}/test/...)")
    return categories


def elpv(seed: int = 0) -> list[Category]:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        raise FileNotFoundError("elpv-dataset is not installed: pip install 'lineside[bench]'")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    rows = [line.split() for line in (data / "labels.csv").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    categories = []
    for cell_type in ("mono", "poly"):
        mine = [(data / path, float(p)) for path, p, t in rows if t == cell_type]
        normal = [path for path, p in mine if p == 0.0]
        rng.shuffle(normal)
        cat = Category(cell_type, normal[:ELPV_POOL])
        cat.test = [Sample(p, 0) for p in normal[ELPV_POOL:]]
        cat.test += [Sample(path, 1, kind="defective" if p == 1.0 else "uncertain") for path, p in mine if p > 0]
        categories.append(cat)
    return categories


def load(spec: str) -> list[Category]:
    """'elpv', 'mvtec:PATH' or 'synthetic:PATH'."""
    kind, _, path = spec.partition(":")
    if kind == "elpv":
        return elpv()
    if kind == "synthetic":
        from .synthetic import generate

        if not Path(path).is_dir() or not any(Path(path).iterdir()):
            generate(Path(path))
        return mvtec(Path(path))
    if kind in ("mvtec", "visa", "btad", "mpdd"):
        return mvtec(Path(path))
    raise ValueError(f"unknown dataset {spec!r}: use elpv, synthetic:PATH or mvtec:PATH")


def read_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth as HxW bool at `shape`; all False for a normal sample."""
    if path is None:
        return np.zeros(shape, bool)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"unreadable mask {path}")
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 127
