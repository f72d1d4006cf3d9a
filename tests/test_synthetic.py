"""The synthetic defect set: seeded, exact masks, MVTec layout the loader reads back."""

import numpy as np

from benchmarks.datasets import load, read_mask
from benchmarks.synthetic import DEFECTS, add_defect, crop, generate, texture
from runtime.detect.frames import read_image


def test_masks_are_exactly_the_changed_pixels():
    rng = np.random.default_rng(0)
    base = crop(texture("gravel"), rng)
    for kind in DEFECTS:
        image, mask = add_defect(base, kind, rng)
        assert mask.any(), kind
        assert np.array_equal((image != base).any(axis=-1), mask)


def test_same_seed_same_files(tmp_path):
    a, b = (
        generate(tmp_path / "a", seed=3, train=1, good=1, per_defect=1),
        generate(tmp_path / "b", seed=3, train=1, good=1, per_defect=1),
    )
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_loader_reads_the_layout(tmp_path):
    generate(tmp_path, seed=1, train=2, good=2, per_defect=1)
    cats = load(f"synthetic:{tmp_path}")
    assert [c.name for c in cats] == ["brick", "grass", "gravel"]
    brick = cats[0]
    assert len(brick.normal_pool) == 2 and len(brick.test) == 2 + len(DEFECTS) and brick.has_masks
    bad = next(s for s in brick.test if s.label == 1)
    image = read_image(bad.path)
    assert read_mask(bad.mask, image.shape[:2]).any()
    assert not read_mask(None, image.shape[:2]).any()


def test_elpv_split_keeps_uncertain_apart():
    mono, poly = load("elpv")
    assert len(mono.normal_pool) == 32
    kinds = {s.kind for s in mono.test}
    assert kinds == {"good", "defective", "uncertain"}
    assert not set(mono.normal_pool) & {s.path for s in mono.test}


def test_visa_split_csv_becomes_the_mvtec_layout(tmp_path):
    import cv2

    from benchmarks.visa import convert

    root = tmp_path / "VisA"
    rows = ["object,split,label,image,mask"]
    for i, (split, label) in enumerate(
        [("train", "normal"), ("test", "normal"), ("test", "anomaly"), ("train", "anomaly")]
    ):
        kind = "Normal" if label == "normal" else "Anomaly"
        image = root / "pcb1" / "Data" / "Images" / kind / f"{i:03d}.JPG"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.full((20, 30, 3), 100, np.uint8))
        mask = ""
        if label == "anomaly":
            mask_path = root / "pcb1" / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            m = np.zeros((20, 30), np.uint8)
            m[5:9, 5:9] = 3  # VisA masks hold region ids
            cv2.imwrite(str(mask_path), m)
            mask = str(mask_path.relative_to(root))
        rows.append(f"pcb1,{split},{label},{image.relative_to(root)},{mask}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    counts = convert(root, root / "split.csv", tmp_path / "out")
    assert counts == {"pcb1/train/normal": 1, "pcb1/test/normal": 1, "pcb1/test/anomaly": 1}
    (cat,) = load(f"mvtec:{tmp_path / 'out'}")
    assert len(cat.normal_pool) == 1 and [s.label for s in cat.test] == [1, 0]
    assert read_mask(cat.test[0].mask, (20, 30)).sum() == 16
