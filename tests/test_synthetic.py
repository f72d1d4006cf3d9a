"""The synthetic defect set: seeded, exact masks, MVTec layout the loader reads back."""

import numpy as np

from benchmarks.datasets import load, read_mask
from benchmarks.synthetic import DEFECTS, add_defect, crop, generate, texture
from runtime.images import read_image


def test_masks_are_exactly_the_changed_pixels():
    rng = np.random.default_rng(0)
    base = crop(texture("gravel"), rng)
    for kind in DEFECTS:
        image, mask = add_defect(base, kind, rng)
        assert mask.any(), kind
        assert np.array_equal((image != base).any(axis=-1), mask)


def test_same_seed_same_files(tmp_path):
    a, b = generate(tmp_path / "a", seed=3, train=1, good=1, per_defect=1), generate(tmp_path / "b", seed=3, train=1, good=1, per_defect=1)
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
