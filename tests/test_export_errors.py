"""Bad input to the export stage: a clear message and nothing half-written left behind."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from export.__main__ import main
from export.build import build_bundle
from export.clip_export import ClipSpec
from export.clip_model import load_clip
from export.sam_export import SamSpec, load_sam
from export.writer import BundleWriter
from runtime.bundle.manifest import Manifest

TINY_CLIP = ClipSpec(arch="lineside-tiny-clip")


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown open_clip architecture 'ViT-B-61'.*Did you mean.*ViT-B-16"):
        load_clip("ViT-B-61")


def test_clip_checkpoint_of_another_architecture_names_keys(tmp_path):
    model, _ = load_clip("lineside-tiny-clip")
    state = model.state_dict()
    state.pop("visual.proj")
    state["visual.ln_post.weight"] = torch.zeros(7)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"not a lineside-tiny-clip checkpoint: 1 missing: visual.proj.*"
        r"shape mismatch: visual.ln_post.weight expected \(64,\) found \(7,\)",
    ):
        load_clip("lineside-tiny-clip", checkpoint=path)


def test_sam_checkpoint_of_another_variant_names_keys(tmp_path):
    clip, _ = load_clip("lineside-tiny-clip")
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    with pytest.raises(ValueError, match=r"\(for sam tiny\) does not fit.*missing: image_encoder\..*unexpected"):
        load_sam("tiny", path)


def test_matching_checkpoint_loads_exactly(tmp_path):
    sam, _ = load_sam("tiny")
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    again, source = load_sam("tiny", path)
    assert source["checkpoint"] == "sam_tiny.pth" and len(source["checkpoint_sha256"]) == 64
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), again.state_dict().values()))


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write a bundle under"):
        BundleWriter(blocker / "bundle")


def test_non_bundle_folder_is_not_overwritten(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and is not a bundle"):
        BundleWriter(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_failure_mid_export_leaves_nothing(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match="taps"):
        build_bundle(out, "custom", ClipSpec(arch="lineside-tiny-clip", taps=(9,)), None)
    assert list(tmp_path.iterdir()) == []


def test_killed_export_leaves_no_bundle_and_is_swept_next_time(tmp_path):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "export", "all", "--profile", "tiny", "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not any(p.name.startswith(".bundle.partial-") for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None, "export never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # a partial folder may remain, but never a bundle-looking one
    build_bundle(out, "custom", TINY_CLIP, None)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_cli_requires_a_weight_source(capsys):
    with pytest.raises(SystemExit, match="no weights for CLIP"):
        main(["clip", "--out", "/tmp/never", "--arch", "lineside-tiny-clip"])


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = main(["clip", "--out", str(tmp_path / "b"), "--arch", "ViT-Q-99", "--random-init"])
    assert code == 1 and "export failed: unknown open_clip architecture" in capsys.readouterr().err


def test_export_into_existing_bundle_keeps_other_components(tmp_path):
    out = tmp_path / "bundle"
    build_bundle(out, "custom", TINY_CLIP, None)
    before = Manifest.read(out).components["clip_image"]
    build_bundle(out, "custom", None, SamSpec(variant="tiny"))
    after = Manifest.read(out)
    assert set(after.components) == {"clip_image", "clip_text", "sam_encoder", "sam_decoder"}
    assert after.components["clip_image"] == before
    from runtime.bundle.loader import Bundle

    Bundle.open(out)  # every carried-over file is still there with its hash


def test_bad_external_data_threshold_in_the_environment_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LINESIDE_EXTERNAL_DATA_THRESHOLD_BYTES", "1.8GB")
    code = main(["sam", "--variant", "tiny", "--random-init", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert (
        code == 1
        and "LINESIDE_EXTERNAL_DATA_THRESHOLD_BYTES must be a number of bytes (e.g. 1.8e9), not '1.8GB'" in err
    )
    assert list(tmp_path.iterdir()) == []
