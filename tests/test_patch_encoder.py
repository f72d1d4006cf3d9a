"""The offline default's encoder: real ImageNet weights, loaded exactly, exported with parity.

Every EfficientNet-Lite variant a profile names is held to the same checks as Lite0:
its packaged file renamed onto timm with no missing or unexpected keys, and real
photos classified right, which only correct names, padding and normalisation give.
"""

import numpy as np
import pytest
import torch
from skimage import data

from export.build import build_bundle
from export.checkpoints import read_state_dict
from export.patch_encoder import (
    VARIANTS,
    PatchSpec,
    freeze_same_padding,
    load_lite,
    load_lite0,
    packaged_weights,
    rename_state_dict,
)
from runtime.bundle.loader import Bundle
from runtime.bundle.preprocess import clip_input
from runtime.detect.detector import Detector

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def lite(request):
    model, source = load_lite(PatchSpec(variant=request.param))
    return request.param, model, source


@pytest.fixture(scope="module")
def lite0():
    model, source = load_lite0(PatchSpec())
    return model, source


def test_packaged_weights_rename_onto_timm_with_no_missing_or_unexpected_keys(lite):
    variant, model, source = lite
    path = packaged_weights(variant)
    renamed = rename_state_dict(read_state_dict(path), model)
    assert set(renamed) == set(model.state_dict())
    # The publisher names each file by its hash's first 8 digits (torch.hub's convention).
    assert source["checkpoint_sha256"].startswith(path.stem.rsplit("-", 1)[1]) and source["pretrained"] == "imagenet-1k"
    assert source["architecture"] == VARIANTS[variant].arch and source["variant"] == variant


@pytest.mark.parametrize("image, label", [(data.chelsea(), EGYPTIAN_CAT), (data.coffee(), ESPRESSO)])
def test_real_weights_recognise_real_photos(lite, image, label):
    """Only correct weights, names, padding and normalisation together get these right; each
    variant at the resolution it was trained at."""
    variant, model, _ = lite
    size = VARIANTS[variant].native_size
    x = torch.from_numpy(clip_input(image, {"size": [size, size], "interpolation": "area"}))
    with torch.no_grad():
        probs = model((x - 127.5) / 127.5).softmax(-1)[0]
    assert int(probs.argmax()) == label and float(probs.max()) > 0.5


def test_static_padding_is_exactly_the_dynamic_one(lite0):
    model, _ = load_lite0(PatchSpec())
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        before = model(x)
        after = freeze_same_padding(model, 256)(x)
    assert torch.equal(before, after)


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "bundle"
    build_bundle(out, "default", patch=PatchSpec(image_size=128, precisions=("fp32", "int8")))
    return out


def test_reference_only_bundle_needs_references(default_bundle):
    detector = Detector.from_bundle(default_bundle)
    assert not detector.has_language and detector.refiner is None
    with pytest.raises(ValueError, match="no language branch.*references"):
        detector.detect(np.zeros((64, 64, 3), np.uint8), "cell")


def test_reference_only_bundle_finds_a_planted_scratch_on_a_real_texture(default_bundle):
    brick = data.brick()  # 512 x 512 gray, a real texture
    frame = np.stack([brick] * 3, axis=-1)
    refs = [frame[:256, :256], frame[256:, 256:], frame[:256, 256:]]
    test = frame[256:, :256].copy()
    test[100:110, 40:200] = 255  # a bright scratch across the bricks
    detector = Detector.from_bundle(default_bundle, sam_gate=0.0, region_threshold=0.0)
    result = detector.detect(test, "brick_wall", references=refs, colour="RGB")
    assert result.branches == ("reference",)
    inside = result.anomaly_map[98:112, 40:200].mean()
    outside = np.r_[result.anomaly_map[:80].ravel(), result.anomaly_map[140:].ravel()].mean()
    assert inside > 1.5 * outside
    clean = detector.detect(frame[256:, :256], "brick_wall", references=refs, colour="RGB")
    assert clean.image_score < result.image_score


def test_lite2_exports_on_its_own_grid_and_width_with_parity(tmp_path):
    """Lite2 is wider than Lite0 (48 + 88 channels at the taps): the manifest's token width,
    grid and recorded parity come from the graph, not from Lite0's numbers."""
    out = tmp_path / "lite2"
    build_bundle(out, "lite2", patch=PatchSpec(variant="lite2", image_size=128, precisions=("fp32",)))
    comp = Bundle.open(out).by_role("image_encoder")
    assert comp.config["grid"] == [16, 16] and comp.config["taps"][0]["layer"] == "stages 2+3"
    assert comp.outputs[1].shape == ("batch", 256, 136) and comp.source["strides"] == [8, 16]
    assert comp.source["architecture"] == "tf_efficientnet_lite2" and comp.source["checkpoint_sha256"].startswith(
        "9656183e"
    )
    parity = comp.files["fp32"].parity
    assert parity["within_bound"] and parity["outputs"]["patch_tokens"]["cosine"] > 0.9999
