"""The text-embedding cache is a folder on disk anything can damage: a damaged entry is warned about,
computed again by the real text graph and rewritten, never trusted (issue 25, case 3)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from runtime.bundle.loader import Bundle
from runtime.detect.detector import Detector
from runtime.detect.text_encoder import TextEncoder

PROMPTS = ["a photo of a flawless screw.", "a photo of a scratched screw.", "a photo of a bent screw."]


def _entries(cache) -> list:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def _overwrite(path, value) -> None:
    with open(path, "wb") as f:  # the entry's own name, whatever its suffix (np.save would add .npy)
        np.save(f, value)


DAMAGE = {  # (entry, every entry, the embeddings' width) -> the entry damaged
    "np.zeros(3)": lambda path, entries, d: _overwrite(path, np.zeros(3)),
    "right shape, NaN": lambda path, entries, d: _overwrite(path, np.full(d, np.nan, np.float32)),
    "float64": lambda path, entries, d: _overwrite(path, np.ones(d, np.float64)),
    "truncated": lambda path, entries, d: path.write_bytes(path.read_bytes()[:40]),
    "not numpy": lambda path, entries, d: path.write_bytes(b"\x00garbage" * 30),
    "another prompt's entry": lambda path, entries, d: shutil.copyfile(entries[1], path),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_computed_again_and_rewritten_with_a_warning(tiny_bundle, tmp_path, caplog, damage):
    bundle = Bundle.open(tiny_bundle)
    first = TextEncoder(bundle, cache_dir=tmp_path)
    right = first(PROMPTS)
    entries = _entries(tmp_path)
    assert len(entries) == 3
    DAMAGE[damage](entries[0], entries, right.shape[1])
    with caplog.at_level(logging.WARNING, logger="lineside.text"):
        again = TextEncoder(bundle, cache_dir=tmp_path)
        found = again(PROMPTS)
    np.testing.assert_allclose(found, right, rtol=1e-6, atol=1e-6)
    assert again.encoded == 1  # the damaged one alone went through the graph
    warned = [r.getMessage() for r in caplog.records if "text cache entry" in r.getMessage()]
    assert len(warned) == 1 and "computing it again and rewriting it" in warned[0] and "\n" not in warned[0]
    third = TextEncoder(bundle, cache_dir=tmp_path)
    np.testing.assert_allclose(third(PROMPTS), right, rtol=1e-6, atol=1e-6)
    assert third.encoded == 0  # rewritten: read from the cache again


def test_a_cache_of_zeros_never_turns_frames_into_errors(tiny_bundle, tmp_path):
    """The issue's case: every cached file replaced by np.zeros(3); detect used to raise ValueError."""
    Detector.from_bundle(tiny_bundle, use_sam=False, text_cache_dir=tmp_path).detect(_frame(), "screw", colour="RGB")
    for path in _entries(tmp_path):
        _overwrite(path, np.zeros(3))
    detector = Detector.from_bundle(tiny_bundle, use_sam=False, text_cache_dir=tmp_path)
    result = detector.detect(_frame(), "screw", colour="RGB")
    assert result.label in ("OK", "NG"), result.error
    assert detector.text.encoder.encoded == len(_entries(tmp_path))  # every entry computed again


def _frame() -> np.ndarray:
    return np.tile(np.linspace(40, 220, 96, dtype=np.uint8), (96, 1))[..., None].repeat(3, axis=2)
