"""Hostile bundles: every damage is refused at load or by runtime.check, on one line.

The bundle side of the fail-safe contract: malformed manifests, paths that leave
the bundle folder, empty bundles, a bundle id that must follow every field that
changes results, and bundles whose graphs each run but cannot produce a result
together (wrong grid, missing taps). Edits are made to a copy of the tiny bundle
and nothing is recomputed: the loader or the checker must find the damage.
"""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import runtime.bundle.loader
from runtime.bundle.loader import Bundle, file_sha256
from runtime.bundle.manifest import MANIFEST_NAME, BundleError, Manifest
from runtime.check import check_detection, check_detector, check_frame
from runtime.check import main as check_main
from runtime.detect.detector import Detector
from runtime.detect.encoders import ImageEncoder
from runtime.detect.text_encoder import TextEncoder

TAP = "components.clip_image"


@pytest.fixture(scope="module")
def manifest_data(tiny_bundle) -> dict:
    return json.loads((tiny_bundle / MANIFEST_NAME).read_text())


def _edit(folder, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _image(d: dict) -> dict:
    return d["components"]["clip_image"]


def _one_line_refusal(call, match: str) -> str:
    with pytest.raises(BundleError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert match in message, message
    return message


MALFORMED = {
    "no components": (lambda d: d.pop("components"), "components is missing"),
    "components a list": (lambda d: d.update(components=[]), "components must be an object, not list"),
    "component a number": (lambda d: d["components"].update(clip_image=3), f"{TAP} must be an object, not int 3"),
    "no role": (lambda d: _image(d).pop("role"), f"{TAP}.role is missing"),
    "unknown role": (
        lambda d: _image(d).update(role="detector"),
        f"{TAP}.role 'detector' is unknown; one of image_encoder, text_encoder, sam_encoder, sam_decoder, "
        "language_model",
    ),
    "role a number": (lambda d: _image(d).update(role=1), f"{TAP}.role must be a string, not int 1"),
    "role of another kind": (
        lambda d: _image(d).update(role="language_model"),
        f"{TAP}.kind 'onnx' does not fit role 'language_model' (its files are gguf)",
    ),
    "one role twice": (
        lambda d: d["components"]["clip_text"].update(role="image_encoder"),
        "components.clip_text.role 'image_encoder' is components.clip_image's too",
    ),
    "no kind": (lambda d: _image(d).pop("kind"), f"{TAP}.kind is missing"),
    "unknown kind": (lambda d: _image(d).update(kind="tflite"), f"{TAP}.kind 'tflite' is unknown"),
    "no files": (lambda d: _image(d).pop("files"), f"{TAP}.files is missing"),
    "files empty": (lambda d: _image(d).update(files={}), f"{TAP}.files is empty"),
    "file entry a string": (lambda d: _image(d)["files"].update(fp32="a.onnx"), f"{TAP}.files.fp32 must be an object"),
    "no sha256": (lambda d: _image(d)["files"]["fp32"].pop("sha256"), f"{TAP}.files.fp32.sha256 is missing"),
    "no bytes": (lambda d: _image(d)["files"]["fp32"].pop("bytes"), f"{TAP}.files.fp32.bytes is missing"),
    "no path": (lambda d: _image(d)["files"]["fp32"].pop("path"), f"{TAP}.files.fp32.path is missing"),
    "bytes a string": (
        lambda d: _image(d)["files"]["fp32"].update(bytes="12"),
        f"{TAP}.files.fp32.bytes must be an int, not str '12'",
    ),
    "bytes a bool": (lambda d: _image(d)["files"]["fp32"].update(bytes=True), "bytes must be an int, not bool True"),
    "bytes negative": (lambda d: _image(d)["files"]["fp32"].update(bytes=-1), "bytes is -1"),
    "sha256 not hex": (lambda d: _image(d)["files"]["fp32"].update(sha256="xyz"), "sha256 must be 64 lowercase hex"),
    "unknown precision": (
        lambda d: _image(d)["files"].update(fp8=_image(d)["files"]["fp32"]),
        f"{TAP}.files.fp8: unknown precision; one of fp32, fp16, int8",
    ),
    "inputs not a list": (lambda d: _image(d).update(inputs={}), f"{TAP}.inputs must be a list, not dict"),
    "input a string": (lambda d: _image(d).update(inputs=["pixels"]), f"{TAP}.inputs[0] must be an object"),
    "shape not a list": (
        lambda d: _image(d)["inputs"][0].update(shape="1x3x64x64"),
        f"{TAP}.inputs[0].shape must be a list, not str",
    ),
    "shape of floats": (
        lambda d: _image(d)["inputs"][0].update(shape=[1, 3, 64.0, 64]),
        f"{TAP}.inputs[0].shape[2] must be an int or a dimension name, not float 64.0",
    ),
    "no dtype": (lambda d: _image(d)["outputs"][1].pop("dtype"), f"{TAP}.outputs[1].dtype is missing"),
    "unknown dtype": (
        lambda d: _image(d)["outputs"][0].update(dtype="float8"),
        f"{TAP}.outputs[0].dtype 'float8' is unknown",
    ),
    "config a list": (lambda d: _image(d).update(config=[]), f"{TAP}.config must be an object, not list"),
    "asset without path": (
        lambda d: d["components"]["clip_text"]["assets"]["tokenizer"].pop("path"),
        "components.clip_text.assets.tokenizer.path is missing",
    ),
    "odd component name": (
        lambda d: d["components"].update({"a\nb": {"role": "image_encoder", "kind": "onnx"}}),
        "components['a\\nb'].files",
    ),
    "versions a string": (lambda d: d.update(versions="1"), "versions must be an object, not str"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_manifest_is_one_line_naming_the_field(manifest_data, name):
    change, match = MALFORMED[name]
    data = copy.deepcopy(manifest_data)
    change(data)
    message = _one_line_refusal(lambda: Manifest.from_dict(data, "b/manifest.json"), match)
    assert message.startswith("b/manifest.json: ") and "rebuild" in message


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "the manifest is empty"),
        ("[1, 2]", "the top level must be an object, not list"),
        ("{not json", "unreadable manifest"),
        ("[" * 100_000, "unreadable manifest"),
        ('"text"', "not str"),
    ],
    ids=["empty", "list", "not-json", "deep", "string"],
)
def test_unusable_manifest_file_is_refused_by_the_loader_and_the_checker(bundle_copy, capsys, content, match):
    (bundle_copy / MANIFEST_NAME).write_text(content)
    _one_line_refusal(lambda: Bundle.open(bundle_copy), match)
    assert check_main([str(bundle_copy)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err


def test_zero_components_is_refused_with_the_fix(bundle_copy):
    _edit(bundle_copy, lambda d: d.update(components={}))
    message = _one_line_refusal(lambda: Bundle.open(bundle_copy), "components is empty: the bundle has no graphs")
    assert "python -m export all --profile" in message


@pytest.mark.parametrize(
    "path, match",
    [
        ("/etc/hostname", "is absolute"),
        ("../outside.onnx", "climbs out with '..'"),
        ("sub/../../x.onnx", "climbs out"),
        ("C:\\models\\x.onnx", "is absolute"),
        ("", "non-empty relative path"),
    ],
)
def test_paths_outside_the_bundle_are_refused(manifest_data, path, match):
    data = copy.deepcopy(manifest_data)
    data["components"]["sam_encoder"]["files"]["int8"]["path"] = path
    message = _one_line_refusal(lambda: Manifest.from_dict(data), match)
    assert "components.sam_encoder.files.int8.path" in message


def test_symlink_out_of_the_bundle_is_refused_even_with_the_right_content(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    (bundle_copy / "clip_text.fp32.onnx").rename(outside)
    os.symlink(outside, bundle_copy / "clip_text.fp32.onnx")  # same bytes, same hash: only the place is wrong
    _one_line_refusal(lambda: Bundle.open(bundle_copy), "clip_text file clip_text.fp32.onnx resolves to")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        Bundle.open(bundle_copy)


def test_symlink_inside_the_bundle_and_symlink_loop(bundle_copy):
    (bundle_copy / "store").mkdir()
    (bundle_copy / "clip_text.fp32.onnx").rename(bundle_copy / "store" / "text.onnx")
    os.symlink("store/text.onnx", bundle_copy / "clip_text.fp32.onnx")
    assert Bundle.open(bundle_copy).session("clip_text")  # a link that stays inside is fine
    (bundle_copy / "clip_text.fp32.onnx").unlink()
    os.symlink("clip_text.fp32.onnx", bundle_copy / "clip_text.fp32.onnx")
    _one_line_refusal(lambda: Bundle.open(bundle_copy), "clip_text.fp32.onnx")


def test_a_path_pointed_at_another_file_is_refused_by_its_hash(bundle_copy):
    _edit(bundle_copy, lambda d: _image(d)["files"]["int8"].update(path="clip_image.fp16.onnx"))
    _one_line_refusal(lambda: Bundle.open(bundle_copy), "clip_image.fp16.onnx")


def test_bundle_id_follows_every_field_that_changes_results(manifest_data):
    base = Manifest.from_dict(manifest_data).bundle_id
    changes = {
        "logit scale": lambda d: _image(d)["config"].update(logit_scale=50.0),
        "taps": lambda d: _image(d)["config"]["taps"].pop(),
        "grid": lambda d: _image(d)["config"].update(grid=[2, 8]),
        "preprocessing": lambda d: _image(d)["preprocessing"].update(interpolation="bilinear"),
        "an output": lambda d: _image(d)["outputs"][0].update(name="emb"),
        "a hash": lambda d: _image(d)["files"]["fp16"].update(sha256="0" * 64),
        "tokenizer": lambda d: d["components"]["clip_text"]["config"]["tokenizer"].update(context_length=76),
        "roles": lambda d: [
            d["components"][n].update(role=r)
            for n, r in (("sam_encoder", "sam_decoder"), ("sam_decoder", "sam_encoder"))
        ],
    }
    ids = {}
    for what, change in changes.items():
        data = copy.deepcopy(manifest_data)
        change(data)
        ids[what] = Manifest.from_dict(data).bundle_id
    assert base not in ids.values() and len(set(ids.values())) == len(ids), ids
    same = copy.deepcopy(manifest_data)
    _image(same)["files"]["fp32"]["parity"] = {"remeasured": True}  # figures, not results
    same["created"], same["components"] = "yesterday", dict(reversed(same["components"].items()))
    assert Manifest.from_dict(same).bundle_id == base


def test_an_edited_config_never_reads_the_old_text_cache(tiny_bundle, bundle_copy, tmp_path):
    _edit(bundle_copy, lambda d: _image(d)["config"].update(logit_scale=1.0))
    old, new = Bundle.open(tiny_bundle), Bundle.open(bundle_copy)
    assert old.bundle_id != new.bundle_id
    assert TextEncoder(old, cache_dir=tmp_path).cache != TextEncoder(new, cache_dir=tmp_path).cache


def _swap_graph(folder, component: str, source: str | None = None, data: bytes | None = None) -> None:
    """Replace `component`'s fp32 graph and re-sign the manifest, as a careless hand-edit would."""
    path = folder / f"{component}.fp32.onnx"
    path.write_bytes(data if data is not None else (folder / f"{source}.fp32.onnx").read_bytes())
    entry = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    _edit(folder, lambda d: d["components"][component]["files"]["fp32"].update(entry))


def test_swapped_text_graph_is_refused_at_start(bundle_copy, tmp_path):
    _swap_graph(bundle_copy, "clip_text", source="clip_image")
    _one_line_refusal(
        lambda: Detector.from_bundle(bundle_copy, text_cache_dir=tmp_path),
        "clip_text (fp32): graph inputs are ['pixels']",
    )


def test_broken_text_graph_is_refused_at_start(bundle_copy, tmp_path):
    _swap_graph(bundle_copy, "clip_text", data=b"\x08\x07not a protobuf" * 64)
    _one_line_refusal(
        lambda: Detector.from_bundle(bundle_copy, text_cache_dir=tmp_path), "onnxruntime cannot load this graph"
    )


BROKEN_PIPELINES = {
    "wrong grid": (lambda d: _image(d)["config"].update(grid=[5, 5]), "config.grid [5, 5] does not fit"),
    "tap naming no output": (
        lambda d: _image(d)["config"]["taps"][0].update(output="patch_tokens_9"),
        "config.taps[0] names output str 'patch_tokens_9', which is not among",
    ),
    "no taps": (lambda d: _image(d)["config"].update(taps=[]), "config.taps must be a non-empty list"),
    "tap outputs missing": (lambda d: _image(d).update(outputs=_image(d)["outputs"][:1]), "config.taps[0]"),
    "size unlike the graph": (
        lambda d: _image(d)["preprocessing"].update(size=[32, 32]),
        "preprocessing.size [32, 32] differs",
    ),
    "no branches": (
        lambda d: _image(d)["config"].pop("branches"),
        "config.branches must be a non-empty list of language and/or reference, not NoneType",
    ),
    "unknown branch": (
        lambda d: _image(d)["config"].update(branches=["language", "smell"]),
        "config.branches must be a non-empty list of language and/or reference, not list",
    ),
    "no logit scale": (
        lambda d: _image(d)["config"].pop("logit_scale"),
        "config.logit_scale must be a positive number for the language branch, not NoneType",
    ),
    "logit scale zero": (
        lambda d: _image(d)["config"].update(logit_scale=0),
        "config.logit_scale must be a positive number for the language branch, not int 0",
    ),
    "another tokenizer": (
        lambda d: d["components"]["clip_text"]["config"]["tokenizer"].update(kind="sentencepiece"),
        "components.clip_text.config.tokenizer.kind str 'sentencepiece' is unknown",
    ),
    "tokenizer eot of another vocabulary": (
        lambda d: d["components"]["clip_text"]["config"]["tokenizer"].update(eot=7),
        "components.clip_text.config.tokenizer sot/eot 49406/7 differ from its vocabulary's 49406/49407",
    ),
}


@pytest.mark.parametrize("name", BROKEN_PIPELINES)
def test_check_fails_a_bundle_that_cannot_produce_a_result(bundle_copy, capsys, name):
    change, match = BROKEN_PIPELINES[name]
    _edit(bundle_copy, change)
    assert check_main([str(bundle_copy)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and match in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("name", ["wrong grid", "tap naming no output", "no taps"])
def test_the_end_to_end_run_alone_catches_a_broken_pipeline(bundle_copy, monkeypatch, name):
    """Without the loader's config rule, running the detector once still fails the bundle."""
    monkeypatch.setattr(runtime.bundle.loader, "_check_image_config", lambda folder, component: None)
    _edit(bundle_copy, BROKEN_PIPELINES[name][0])
    _one_line_refusal(lambda: check_detector(Bundle.open(bundle_copy), check_frame()), "the detector")


class PoisonedEncoder(ImageEncoder):
    """The real image graph, its global embedding turned to NaN after the encoder's own finite check."""

    def encode(self, rgb):
        emb, taps = super().encode(rgb)
        return emb * np.nan, taps


def test_the_end_to_end_run_refuses_non_finite_numbers(tiny_bundle, tmp_path):
    real = Detector.from_bundle(tiny_bundle, sam_gate=0.0, text_cache_dir=tmp_path)
    encoder = PoisonedEncoder(real.encoder.session, real.encoder.component, real.encoder.precision)
    detector = Detector(encoder, real.text, real.refiner, real.settings, bundle=real.bundle)
    message = _one_line_refusal(lambda: check_detection(detector, check_frame()), "the detector")
    assert "not finite" in message or "ERROR" in message


def test_check_fails_a_bundle_without_an_image_graph(bundle_copy, capsys):
    _edit(bundle_copy, lambda d: [d["components"].pop(n) for n in ("clip_image", "clip_text")])
    assert check_main([str(bundle_copy)]) == 1
    assert "has no image encoder (role image_encoder)" in capsys.readouterr().err


def test_check_passes_the_intact_tiny_bundle(tiny_bundle, capsys):
    # its random-weight variants hold their bounds on the check frame or not by CPU (check then exits 1)
    assert check_main([str(tiny_bundle), "--allow", "fp16", "--allow", "int8"]) == 0
    out = capsys.readouterr().out
    assert "\ndetector " in out and "the detector produced a finite result" in out


def test_check_cli_failure_is_one_line_without_traceback(bundle_copy):
    _edit(bundle_copy, lambda d: _image(d)["files"]["fp32"].update(bytes="many"))
    done = subprocess.run(
        [sys.executable, "-m", "runtime.check", str(bundle_copy)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "components.clip_image.files.fp32.bytes must be an int, not str 'many'" in done.stderr
