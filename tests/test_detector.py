"""The detector on a bundle whose right answers are known (tests/controlled.py)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from runtime.detect.detector import Detector
from runtime.detect.encoders import ImageEncoder
from runtime.detect.regions import work_size
from runtime.settings import DetectorSettings
from tests.controlled import CATEGORY, LOGIT_SCALE, SCRATCH_PROMPT, part

DEFECT = (96, 64, 144, 112)  # x0, y0, x1, y1 on a 256 x 256 part


@pytest.fixture
def detector(controlled, tmp_path):
    # map_weight 1: the score is the map's peak, since a small defect barely moves the global embedding
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "cache")


def _inside(point, box, margin=8):
    x, y = point
    return box[0] - margin <= x <= box[2] + margin and box[1] - margin <= y <= box[3] + margin


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_planted_defect_lights_up_and_is_explained_by_the_planted_prompt(detector):
    result = detector.detect(part(red_box=DEFECT), CATEGORY)
    assert result.label == "NG" and result.image_score > 0.9
    peak_y, peak_x = np.unravel_index(result.anomaly_map.argmax(), result.anomaly_map.shape)
    assert _inside((peak_x, peak_y), DEFECT, margin=0)
    assert result.refiner == "sam" and len(result.regions) == 1
    region = result.regions[0]
    assert _iou(region.bbox, DEFECT) > 0.7, region.bbox
    assert region.prompt == SCRATCH_PROMPT and region.probability > 0.9
    assert region.sam_iou == pytest.approx(0.9)
    assert {"image_encoder", "sam_encoder", "sam_decoder", "explain"} <= set(result.timings_ms)


def test_logit_scale_is_the_bundles_unless_a_setting_overrides_it(controlled, tmp_path):
    """The temperature is the checkpoint's own, from the manifest, and every result records the one it used."""
    cooler = Path(shutil.copytree(controlled, tmp_path / "cooler"))
    manifest = json.loads((cooler / "manifest.json").read_text())
    manifest["components"]["clip_image"]["config"]["logit_scale"] = 10.0
    (cooler / "manifest.json").write_text(json.dumps(manifest))
    frame, settings = part(red_box=DEFECT), DetectorSettings(map_weight=1.0, text_cache_dir=tmp_path / "cache")
    assert settings.logit_scale is None  # unset: the bundle's
    built, cooled, overridden = (
        Detector.from_bundle(b, replace(settings, logit_scale=scale)).detect(frame, CATEGORY)
        for b, scale in ((controlled, None), (cooler, None), (cooler, 100.0))
    )
    assert [r.settings["logit_scale"] for r in (built, cooled, overridden)] == [LOGIT_SCALE, 10.0, 100.0]
    assert cooled.image_score < built.image_score - 0.005  # a cooler softmax is less sure, on the defect
    assert cooled.anomaly_map.min() > 100 * built.anomaly_map.min()  # and on the good surface
    assert overridden.image_score == pytest.approx(built.image_score, abs=1e-6)
    np.testing.assert_allclose(overridden.anomaly_map, built.anomaly_map, atol=1e-6)
    back = Detector.from_bundle(cooler, replace(settings, logit_scale=100.0)).with_settings(settings)
    assert back.settings.logit_scale == 10.0


def test_ok_part_stays_ok_and_never_pays_for_sam(detector):
    result = detector.detect(part(), CATEGORY)
    assert result.label == "OK" and result.image_score < 0.1
    assert result.regions == [] and result.refiner == "none"
    assert "sam_encoder" not in result.timings_ms


class RecordingRefiner:
    """SAM that records the candidates it is prompted with, then runs the real decoder."""

    def __init__(self, sam):
        self.sam, self.seen = sam, []

    def embed(self, rgb):
        return self.sam.embed(rgb)

    def masks(self, embeddings, work_hw, found):
        self.seen.extend(found)
        return self.sam.masks(embeddings, work_hw, found)


def test_sam_prompts_land_inside_the_defect(detector):
    spy = RecordingRefiner(detector.refiner)
    Detector(detector.encoder, detector.text, spy, detector.settings).detect(part(red_box=DEFECT), CATEGORY)
    seen = spy.seen
    assert len(seen) == 1
    box = seen[0].box  # the coarse CLIP map: it covers the defect, give or take one patch (32 px here)
    assert _inside(seen[0].peak, DEFECT, margin=0)
    assert all(abs(a - b) <= 32 for a, b in zip(box, DEFECT)) and _iou(box, DEFECT) > 0.5


def test_contour_refiner_without_sam_gives_the_same_explanation(controlled, tmp_path):
    detector = Detector.from_bundle(controlled, map_weight=1.0, use_sam=False, text_cache_dir=tmp_path)
    result = detector.detect(part(red_box=DEFECT), CATEGORY)
    assert result.refiner == "contours" and result.regions[0].prompt == SCRATCH_PROMPT


def test_dropped_bank_prompts_are_not_used(detector):
    text = detector.text.category(CATEGORY)
    assert text.bank_prompts == 2 and all("flawless scratch" not in t for t in text.texts)


def test_reference_branch_alone_flags_the_defect(controlled, tmp_path):
    detector = Detector.from_bundle(controlled, map_weight=1.0, reference_weight=1.0, text_cache_dir=tmp_path)
    refs = [part(), part(size=300)]  # another size: resized like any frame
    bad = detector.detect(part(red_box=DEFECT), CATEGORY, references=refs)
    good = detector.detect(part(), CATEGORY, references=refs)
    assert bad.branches == ("language", "reference")
    assert bad.anomaly_map[DEFECT[1] : DEFECT[3], DEFECT[0] : DEFECT[2]].mean() > 5 * good.anomaly_map.mean()
    assert good.image_score < 0.01 < bad.image_score


def test_reference_memory_gives_the_scores_of_the_list(controlled, tmp_path):
    detector = Detector.from_bundle(controlled, map_weight=1.0, reference_weight=1.0, text_cache_dir=tmp_path)
    refs = [part(), part(size=300)]
    memory = detector.remember(refs)
    from_list = detector.detect(part(red_box=DEFECT), CATEGORY, references=refs)
    from_memory = detector.detect(part(red_box=DEFECT), CATEGORY, references=memory)
    assert from_memory.image_score == from_list.image_score and memory.count == 2
    assert np.array_equal(from_memory.anomaly_map, from_list.anomaly_map)
    refs[0][:] = 0  # edited in place: the content changed, so the list is encoded again
    assert detector.detect(part(red_box=DEFECT), CATEGORY, references=refs).image_score != from_list.image_score


def test_calibrate_returns_a_threshold_and_changes_nothing(detector):
    before = detector.settings
    threshold = detector.calibrate([part(), part(size=128)], CATEGORY)
    assert detector.settings is before
    detector = detector.with_settings(replace(detector.settings, threshold=threshold))
    assert detector.settings.threshold == threshold
    assert detector.detect(part(), CATEGORY).label == "OK"
    assert detector.detect(part(red_box=DEFECT), CATEGORY).label == "NG"


def test_text_embeddings_are_cached_on_disk(controlled, tmp_path):
    Detector.from_bundle(controlled, text_cache_dir=tmp_path).text.category(CATEGORY)
    cached = list((tmp_path).rglob("*.npz"))
    assert len(cached) == 7 * 8 + 5 * 8 + 2  # two ensembles x 8 templates, plus the two kept bank prompts
    again = Detector.from_bundle(controlled, text_cache_dir=tmp_path)
    again.text.category(CATEGORY)
    assert again.text.encoder.encoded == 0  # every embedding came from the cache


class LostDevice:
    """A session whose device has gone away."""

    providers = ("CUDAExecutionProvider",)

    def run(self, feeds, outputs=None):
        raise RuntimeError("device lost")


def test_failed_inference_is_error_never_ok(detector):
    encoder = ImageEncoder(LostDevice(), detector.encoder.component)
    result = Detector(encoder, detector.text, detector.refiner, detector.settings).detect(part(), CATEGORY)
    assert result.label == "ERROR" and "device lost" in result.error


def test_stream_keeps_going_past_bad_frames(detector):
    frames = [part(), None, np.zeros((4, 4, 2), np.uint8), part(red_box=DEFECT)]
    labels = [r.label for r in detector.stream(frames, CATEGORY)]
    assert labels == ["OK", "ERROR", "ERROR", "NG"]


def test_work_size_never_upscales():
    assert work_size(100, 50) == (100, 50) and work_size(6000, 8000) == (384, 512)


def test_with_settings_shares_the_parts_and_refuses_session_settings(detector):
    quiet = detector.with_settings(replace(detector.settings, sam_gate=1.0))
    assert quiet.encoder is detector.encoder and quiet.text is detector.text and quiet.refiner is detector.refiner
    assert quiet.detect(part(red_box=DEFECT), CATEGORY).refiner == "none"
    assert detector.settings.sam_gate != 1.0
    with pytest.raises(ValueError, match="precision, threads need new sessions"):
        detector.with_settings(replace(detector.settings, precision="fp16", threads=2))
    with pytest.raises(AttributeError):
        detector.settings = quiet.settings


def test_references_encoded_by_another_graph_are_refused(detector):
    memory = replace(detector.remember([part()]), encoder="clip_image fp16 0123456789abcdef")
    with pytest.raises(ValueError, match="remember them with this detector"):
        detector.detect(part(), CATEGORY, references=memory)
