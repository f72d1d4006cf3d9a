"""IO binding (runtime/bundle/binding.py) computes exactly what plain runs compute.

On the CPU provider a bound session binds host memory, so these tests run the
same code path a CUDA box runs (device "cuda" there), and demand bit-equal
results: binding changes where tensors live, never what is computed.
"""

import numpy as np
import pytest

from runtime.bundle.binding import BoundSession, bound, device_of
from runtime.bundle.loader import Bundle
from runtime.detect.detector import Detector
from runtime.detect.encoders import ImageEncoder
from runtime.detect.regions import Candidate
from runtime.detect.sam import SamRefiner
from runtime.settings import DetectorSettings

FRAME = np.random.default_rng(11).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)


def test_binding_is_off_on_the_cpu_unless_asked(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    session, component = bundle.session("clip_image"), bundle.component("clip_image")
    assert device_of(session) == "cpu" and bound(session, component) is session
    assert bound(session, component, io_binding=False) is session
    forced = bound(session, component, io_binding=True)
    assert isinstance(forced, BoundSession) and forced.providers == session.providers
    assert set(forced._out_buffers) == {t.name for t in component.outputs}  # static: allocated once


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_image_encoder_with_and_without_binding_agree_exactly(tiny_bundle, precision):
    bundle = Bundle.open(tiny_bundle)
    plain = ImageEncoder.from_bundle(bundle, DetectorSettings(precision=precision, io_binding=False))
    bound_ = ImageEncoder.from_bundle(bundle, DetectorSettings(precision=precision, io_binding=True))
    assert plain.precision == bound_.precision == precision
    assert isinstance(bound_.session, BoundSession) and not isinstance(plain.session, BoundSession)
    for seed in (0, 1):  # a second frame: the reused output buffers must not leak the first
        frame = np.random.default_rng(seed).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
        (g1, t1), (g2, t2) = plain.encode(frame), bound_.encode(frame)
        assert np.array_equal(g1, g2) and all(np.array_equal(a, b) for a, b in zip(t1, t2))
    first = bound_.encode(FRAME)[0]
    bound_.encode(FRAME[::-1].copy())
    assert np.array_equal(first, bound_.encode(FRAME)[0])  # returned arrays are copies, not views


def test_sam_embeddings_stay_bound_and_masks_agree_exactly(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    plain, bound_ = SamRefiner(bundle, io_binding=False), SamRefiner(bundle, io_binding=True)
    kept = bound_.embed(FRAME)
    assert not isinstance(kept, np.ndarray)  # an OrtValue where the session runs: never copied back
    assert np.array_equal(kept.numpy(), plain.embed(FRAME))
    empty = np.zeros((48, 64), bool)
    found = [Candidate(empty, (10, 12, 60, 40), (30.0, 30.0), 1.0), Candidate(empty, (0, 0, 40, 40), (5.0, 9.0), 0.5)]
    for a, b in zip(plain.masks(plain.embed(FRAME), (48, 64), found), bound_.masks(kept, (48, 64), found)):
        assert np.array_equal(a.mask, b.mask) and a.iou == b.iou


def test_detector_results_equal_with_binding(tiny_bundle, tmp_path):
    make = lambda on: Detector.from_bundle(  # noqa: E731
        tiny_bundle,
        io_binding=on,
        sam_gate=0.0,
        region_threshold=0.0,
        max_region_frac=1.0,
        text_cache_dir=tmp_path / "text",
    )
    a, b = make(False).detect(FRAME, "screw", colour="RGB"), make(True).detect(FRAME, "screw", colour="RGB")
    assert a.image_score == b.image_score and np.array_equal(a.anomaly_map, b.anomaly_map)
    assert len(a.regions) == len(b.regions) and all(
        np.array_equal(x.mask, y.mask) for x, y in zip(a.regions, b.regions)
    )
