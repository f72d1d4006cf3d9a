"""runtime.bundle refuses every damaged bundle with a message that names the damage."""

import json
import shutil

import numpy as np
import onnx
import pytest

from runtime.bundle.loader import Bundle, file_sha256
from runtime.bundle.manifest import MANIFEST_NAME, ROLES, SCHEMA, BundleError, Manifest
from runtime.detect.detector import Detector


def _edit_manifest(folder, change):
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_tiny_bundle_opens_and_every_graph_matches_its_manifest(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert set(bundle.manifest.components) == {"clip_image", "clip_text", "sam_encoder", "sam_decoder"}
    for name, component in bundle.manifest.components.items():
        for precision in component.files:
            session = bundle.session(name, precision)
            assert session.output_names == tuple(t.name for t in component.outputs)
            assert session.providers == ("CPUExecutionProvider",)


def test_manifest_round_trip(tiny_bundle, tmp_path):
    manifest = Manifest.read(tiny_bundle)
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest and again.bundle_id == manifest.bundle_id
    again.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "sam_encoder.fp32.onnx").unlink()
    with pytest.raises(BundleError, match=r"sam_encoder file sam_encoder\.fp32\.onnx is missing.*rebuild"):
        Bundle.open(bundle_copy)


def test_changed_file_is_refused_by_hash(bundle_copy):
    path = bundle_copy / "clip_image.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"clip_image\.fp32\.onnx: sha256 .* does not match"):
        Bundle.open(bundle_copy)


def test_truncated_file_is_refused_by_size(bundle_copy):
    path = bundle_copy / "clip_text.fp32.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated"):
        Bundle.open(bundle_copy)


def test_renamed_output_is_refused_even_with_a_fresh_hash(bundle_copy):
    path = bundle_copy / "clip_image.fp32.onnx"
    model = onnx.load(str(path))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["renamed" if o == old else o for o in node.output]
    model.graph.output[0].name = "renamed"
    onnx.save(model, str(path))

    def rehash(data):
        entry = data["components"]["clip_image"]["files"]["fp32"]
        entry["sha256"], entry["bytes"] = file_sha256(path), path.stat().st_size

    _edit_manifest(bundle_copy, rehash)
    bundle = Bundle.open(bundle_copy)  # hashes fine now: only the io check can catch it
    with pytest.raises(BundleError, match=r"graph outputs are \['renamed'.*manifest says \['image_embedding'"):
        bundle.session("clip_image")


def test_unknown_schema_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d.update(schema="lineside.bundle/99"))
    with pytest.raises(BundleError, match=rf"unknown bundle schema 'lineside.bundle/99'.*reads '{SCHEMA}'"):
        Bundle.open(bundle_copy)


def test_a_bundle_of_the_first_schema_is_refused_with_the_rebuild(bundle_copy):
    def first_schema(data):  # what lineside.bundle/1 wrote: no roles
        data["schema"] = "lineside.bundle/1"
        for component in data["components"].values():
            component.pop("role")

    _edit_manifest(bundle_copy, first_schema)
    with pytest.raises(BundleError) as caught:
        Bundle.open(bundle_copy)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bundle_copy / MANIFEST_NAME}: ")
    assert f"unknown bundle schema 'lineside.bundle/1'; this runtime reads '{SCHEMA}' only" in message
    assert message.endswith("rebuild the bundle with python -m export (see models/README.md)")


def test_components_are_found_by_the_role_their_manifest_states(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    roles = {role: c.name if (c := bundle.by_role(role)) else None for role in ROLES}
    assert roles == {
        "image_encoder": "clip_image",
        "text_encoder": "clip_text",
        "sam_encoder": "sam_encoder",
        "sam_decoder": "sam_decoder",
        "language_model": None,
    }
    with pytest.raises(ValueError, match="unknown component role 'clip_image'; one of image_encoder"):
        bundle.by_role("clip_image")


def test_component_names_mean_nothing_to_the_runtime(bundle_copy, tmp_path, capsys):
    """Every component renamed: the detector and the checker find each part by its role alone."""
    names = {"clip_image": "eyes", "clip_text": "words", "sam_encoder": "outline", "sam_decoder": "masks"}
    _edit_manifest(bundle_copy, lambda d: d.update(components={names[n]: c for n, c in d["components"].items()}))
    detector = Detector.from_bundle(bundle_copy, sam_gate=0.0, text_cache_dir=tmp_path)
    assert detector.encoder.component.name == "eyes" and detector.text.encoder.component.name == "words"
    assert detector.refiner.encoder_c.name == "outline" and detector.refiner.decoder_c.name == "masks"
    frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    result = detector.detect(frame, "part")
    assert result.label in ("OK", "NG") and result.branches == ("language",) and result.refiner in ("sam", "none")
    from runtime.check import main

    assert main([str(bundle_copy), "--allow", "fp16", "--allow", "int8"]) == 0  # random weights: hold by CPU
    # the decoder ran at fp32, fp16, int8, after its encoder; then fp16 and int8 were measured against fp32
    assert capsys.readouterr().out.count("masks ") == 3 + 2


def test_unreadable_manifest_and_missing_folder(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        Bundle.open(bundle_copy)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Bundle.open(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path)


def test_unknown_component_and_precision_are_named(tiny_bundle, tmp_path):
    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(BundleError, match="no component 'mllm'.*clip_image"):
        bundle.component("mllm")
    partial = tmp_path / "fp32only"
    shutil.copytree(tiny_bundle, partial)
    _edit_manifest(partial, lambda d: d["components"]["sam_encoder"]["files"].pop("fp32"))
    with pytest.raises(BundleError, match=r"sam_encoder has no fp32 graph .*it has: fp16, int8"):
        Bundle.open(partial).session("sam_encoder", "fp32")


def test_check_cli_runs_every_graph(tiny_bundle, capsys):
    from runtime.check import main

    assert main([str(tiny_bundle), "--allow", "fp16", "--allow", "int8"]) == 0  # random weights: hold by CPU
    out = capsys.readouterr().out
    assert "every graph loaded and ran, and the detector produced a finite result" in out
    assert out.count("sam_decoder ") == 3 + 2  # fp32, fp16, int8 run; fp16, int8 measured against fp32
    assert "\ndetector " in out  # the end-to-end run has its row


def test_check_cli_reports_damage(bundle_copy, capsys):
    from runtime.check import main

    (bundle_copy / "clip_text.fp32.onnx").unlink()
    assert main([str(bundle_copy)]) == 1
    assert "clip_text.fp32.onnx is missing" in capsys.readouterr().err


def test_text_encoder_opens_its_graph_at_start(tiny_bundle, tmp_path):
    from runtime.detect.text_encoder import TextEncoder

    encoder = TextEncoder(Bundle.open(tiny_bundle), cache_dir=tmp_path)
    assert encoder._session.output_names == ("text_embedding",) and encoder.encoded == 0
    encoder(["a flawless part", "a flawless part"])
    assert encoder.encoded == 1
    again = TextEncoder(Bundle.open(tiny_bundle), cache_dir=tmp_path)
    again(["a flawless part"])
    assert again.encoded == 0  # found on disk, yet the graph was opened all the same


def test_text_graph_output_is_unit_norm(tiny_bundle):
    from runtime.bundle.tokenizer import ClipTokenizer

    bundle = Bundle.open(tiny_bundle)
    text = bundle.component("clip_text")
    ids = ClipTokenizer.from_component(bundle.path, text)(["a flawless part", "a scratched part"])
    emb = bundle.session("clip_text").run({text.inputs[0].name: ids})[text.outputs[0].name]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_tensorrt_options_carry_the_manifest_profile(tiny_bundle, tmp_path):
    from runtime.bundle.sessions import provider_list

    bundle = Bundle.open(tiny_bundle)
    profile = bundle.component("sam_decoder").tensorrt_profile  # dynamic: 1..16 prompt points
    entries = provider_list(["tensorrt", "cuda", "cpu"], tmp_path, True, profile)
    name, opts = entries[0]
    assert name == "TensorrtExecutionProvider" and entries[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts["trt_profile_max_shapes"] == "point_coords:1x16x2,point_labels:1x16"
    assert opts["trt_engine_cache_path"] == str(tmp_path)
    static = provider_list(["tensorrt"], None, False, bundle.component("clip_image").tensorrt_profile)[0][1]
    assert static["trt_profile_min_shapes"] == static["trt_profile_max_shapes"] == "pixels:1x3x64x64"
    with pytest.raises(ValueError, match="unknown provider 'tpu'"):
        provider_list(["tpu"])
