"""Seeded synthetic defects on real textures, written in the MVTec AD folder layout.

Real textures (scikit-image's brick, grass, gravel) give real statistics; the
defects are drawn, so their masks are exact: the mask is every pixel the defect
changed. Kinds: scratch, crack, hole, stain, colour spot, missing piece, each
at varied size, angle and contrast.

    python -m benchmarks.synthetic --out data/synthetic --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "crack", "hole", "stain", "colour_spot", "missing")
SIZE = 256


def texture(name: str) -> np.ndarray:
    """The scikit-image texture as HxWx3 uint8 RGB."""
    from skimage import data

    image = getattr(data, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def crop(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random SIZE x SIZE crop, randomly flipped: a new 'part' of the same kind."""
    y = rng.integers(0, source.shape[0] - SIZE + 1)
    x = rng.integers(0, source.shape[1] - SIZE + 1)
    out = source[y : y + SIZE, x : x + SIZE]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _shape_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cx, cy = (int(v) for v in rng.integers(48, SIZE - 48, size=2))
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.integers(40, 160)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, int(rng.integers(2, 5)))
    elif kind == "crack":
        points = [(cx, cy)]
        for _ in range(int(rng.integers(6, 14))):
            x, y = points[-1]
            points.append(
                (
                    int(np.clip(x + rng.integers(-14, 15), 0, SIZE - 1)),
                    int(np.clip(y + rng.integers(4, 15) * rng.choice([-1, 1]), 0, SIZE - 1)),
                )
            )
        cv2.polylines(mask, [np.array(points, np.int32)], False, 1, int(rng.integers(1, 4)))
    elif kind in ("hole", "colour_spot"):
        axes = (int(rng.integers(6, 28)), int(rng.integers(6, 28)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == "stain":
        for _ in range(int(rng.integers(2, 5))):
            offset = rng.integers(-20, 21, size=2)
            cv2.circle(mask, (int(cx + offset[0]), int(cy + offset[1])), int(rng.integers(10, 30)), 1, -1)
    elif kind == "missing":  # a bite out of the part's edge
        edge = rng.integers(0, 4)
        w, h = int(rng.integers(30, 90)), int(rng.integers(20, 60))
        x0 = int(rng.integers(0, SIZE - w))
        box = [(x0, 0, x0 + w, h), (x0, SIZE - h, x0 + w, SIZE), (0, x0, h, x0 + w), (SIZE - h, x0, SIZE, x0 + w)][edge]
        cv2.rectangle(mask, box[:2], (box[2] - 1, box[3] - 1), 1, -1)
    return mask.astype(bool)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(defective HxWx3 uint8 RGB, exact HxW bool mask of the changed pixels)."""
    mask = _shape_mask(kind, rng)
    out = image.astype(np.float32)
    if kind in ("scratch", "crack"):
        value = 235.0 if rng.random() < 0.5 else 25.0
        out[mask] = value + rng.normal(0, 6, size=(mask.sum(), 3))
    elif kind == "hole":
        out[mask] = rng.uniform(5, 30) + rng.normal(0, 3, size=(mask.sum(), 3))
    elif kind == "colour_spot":
        out[mask] = rng.choice([[200, 40, 40], [40, 170, 60], [50, 70, 210]]) + rng.normal(0, 8, size=(mask.sum(), 3))
    elif kind == "stain":
        alpha = rng.uniform(0.35, 0.6)
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array([90.0, 60.0, 30.0])
    elif kind == "missing":
        out[mask] = 0.0
    out = np.clip(out, 0, 255).astype(np.uint8)
    changed = (out != image).any(axis=-1)
    return out, changed


def generate(root: Path, seed: int = 0, train: int = 12, good: int = 12, per_defect: int = 6) -> Path:
    """Write root/{texture}/{train/good, test/good, test/<defect>, ground_truth/<defect>}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in TEXTURES:
        source = texture(name)
        base = root / name
        for split, count in (("train/good", train), ("test/good", good)):
            (base / split).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _write(base / split / f"{i:03d}.png", crop(source, rng))
        for kind in DEFECTS:
            (base / "test" / kind).mkdir(parents=True, exist_ok=True)
            (base / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            for i in range(per_defect):
                image, mask = add_defect(crop(source, rng), kind, rng)
                _write(base / "test" / kind / f"{i:03d}.png", image)
                cv2.imwrite(str(base / "ground_truth" / kind / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    (root / "SEED").write_text(f"{seed}\n")
    return root


def _write(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=12, help="good crops per texture for references (16 for 16 shots)")
    args = ap.parse_args(argv)
    print(f"wrote {generate(args.out, args.seed, train=args.train)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
