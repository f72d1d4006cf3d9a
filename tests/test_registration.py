"""reference_window auto: registered parts are compared in place, parts that move are compared anywhere."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic import SIZE, texture
from runtime.detect.references import ReferenceMemory
from runtime.detect.registration import (
    AUTO,
    MIN_REGISTERED_REFERENCES,
    REGISTERED_RATIO,
    REGISTERED_WINDOW,
    alignment,
    resolve_window,
)
from runtime.detect.scoring import l2_normalize

CELL = 8  # pixels per grid cell of the patch encoder below


class PixelPatchEncoder:
    """ImageEncoder's interface, shift-equivariant like a convolutional encoder: each CELL x CELL grey patch,
    mean removed and normalised, is a token (a real local descriptor, no learned weights to stand in for)."""

    grid, identity = (SIZE // CELL, SIZE // CELL), "pixel patches 0000"

    def __init__(self):
        self.calls = 0

    def encode(self, rgb: np.ndarray):
        self.calls += 1
        grey = rgb.astype(np.float32).mean(axis=2)  # (S, S)
        g = self.grid[0]
        patches = grey.reshape(g, CELL, g, CELL).transpose(0, 2, 1, 3).reshape(g * g, CELL * CELL)
        tokens = l2_normalize(patches - patches.mean(axis=1, keepdims=True))  # (N, 64)
        return l2_normalize(tokens.mean(axis=0)), [tokens]


def registered(count: int, seed: int = 0) -> list[np.ndarray]:
    """The same brick part each time, moved by at most one pixel, with sensor noise."""
    rng, src = np.random.default_rng(seed), texture("brick")
    out = []
    for _ in range(count):
        dy, dx = (int(v) for v in rng.integers(0, 2, 2))
        noisy = src[dy : dy + SIZE, dx : dx + SIZE].astype(np.float32) + rng.normal(0, 4, (SIZE, SIZE, 3))
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def shifted(count: int, seed: int = 0) -> list[np.ndarray]:
    """Brick parts that lie anywhere in the frame: crops at random offsets of up to 64 pixels."""
    rng, src = np.random.default_rng(seed), texture("brick")
    out = []
    for _ in range(count):
        dy, dx = (int(v) for v in rng.integers(0, 64, 2))
        out.append(np.ascontiguousarray(src[dy : dy + SIZE, dx : dx + SIZE]))
    return out


def test_registered_parts_are_compared_in_place():
    memory = ReferenceMemory.build(
        PixelPatchEncoder(), registered(MIN_REGISTERED_REFERENCES), coreset_ratio=0.1, window=AUTO
    )
    assert memory.window == REGISTERED_WINDOW
    assert memory.coreset_ratio == 1.0 and memory.index == "numpy"  # in place: every patch, exact


def test_shifted_parts_are_compared_anywhere():
    memory = ReferenceMemory.build(
        PixelPatchEncoder(), shifted(MIN_REGISTERED_REFERENCES), coreset_ratio=0.1, window=AUTO
    )
    assert memory.window == 0
    assert memory.coreset_ratio == 0.1  # anywhere: the coreset the settings asked for


def test_alignment_grows_with_the_shift():
    enc = PixelPatchEncoder()
    aligned = alignment([enc.encode(i)[1] for i in registered(4)], enc.grid)
    moved = alignment([enc.encode(i)[1] for i in shifted(4)], enc.grid)
    assert aligned < REGISTERED_RATIO < moved
    assert moved > 1.5 * aligned


def test_one_reference_cannot_tell_and_is_compared_anywhere():
    assert ReferenceMemory.build(PixelPatchEncoder(), registered(1), window=AUTO).window == 0
    assert np.isnan(alignment([[np.ones((4, 2), np.float32)]], (2, 2)))


def test_a_few_aligned_references_are_still_compared_anywhere():
    """Too few places to compare with: a good part laid out a little differently would be a defect."""
    few = ReferenceMemory.build(PixelPatchEncoder(), registered(MIN_REGISTERED_REFERENCES - 1), window=AUTO)
    assert few.window == 0


def test_a_set_window_is_kept_and_a_negative_one_refused():
    assert resolve_window(2, [], None) == 2
    assert resolve_window(0, [], None) == 0
    with pytest.raises(ValueError, match="reference_window -2"):
        resolve_window(-2, [], None)


def test_an_auto_memory_is_read_back_from_the_cache(tmp_path):
    enc = PixelPatchEncoder()
    first = ReferenceMemory.build(enc, registered(MIN_REGISTERED_REFERENCES), window=AUTO, cache=tmp_path)
    calls = enc.calls
    again = ReferenceMemory.build(enc, registered(MIN_REGISTERED_REFERENCES), window=AUTO, cache=tmp_path)
    assert enc.calls == calls  # not encoded again
    assert again.window == first.window == REGISTERED_WINDOW


def test_the_setting_takes_auto_as_minus_one_and_refuses_below():
    import argparse

    from runtime import options

    parser = argparse.ArgumentParser()
    options.add_arguments(parser, "detector")
    assert options.load(parser.parse_args(["--reference-window", "-1"])).detector.reference_window == AUTO
    with pytest.raises(ValueError, match="reference_window: -2 must be >= -1"):
        options.load(parser.parse_args(["--reference-window", "-2"]))
