"""Real-size export (ViT-B-16 + SAM vit_b, random weights): about 2 minutes on 2 cores."""

import pytest

from export.__main__ import main
from runtime.bundle import Bundle
from runtime.check import check


@pytest.mark.slow
def test_edge_profile_random_init_exports_and_runs(tmp_path, capsys):
    out = tmp_path / "edge"
    assert main(["all", "--profile", "edge", "--random-init", "--precisions", "fp32", "--out", str(out), "-q"]) == 0
    bundle = Bundle.open(out)
    image = bundle.component("clip_image")
    assert image.config["grid"] == [14, 14] and [t["layer"] for t in image.config["taps"]] == [6, 9, 12]
    assert image.config["vv_from"] == 4 and image.outputs[1].shape == ("batch", 196, 512)
    assert bundle.component("sam_encoder").outputs[0].shape == (1, 256, 64, 64)
    _, rows = check(out)
    assert len(rows) == 4
