"""python -m runtime.detect end to end on the tiny bundle, a corrupt file included."""

import json

import cv2
import numpy as np

from runtime.detect.__main__ import main


def test_every_input_gets_a_line_and_an_overlay(tiny_bundle, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"part{i}.png"), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    refs = tmp_path / "refs"
    refs.mkdir()
    cv2.imwrite(str(refs / "good.png"), np.full((100, 100, 3), 120, np.uint8))
    out = tmp_path / "out"
    code = main(
        [
            str(images),
            "--bundle",
            str(tiny_bundle),
            "--category",
            "screw",
            "--out",
            str(out),
            "--references",
            str(refs),
            "--text-cache-dir",
            str(tmp_path / "cache"),
            "--threshold",
            "0.7",
        ]
    )
    assert code == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    broken = next(x for x in lines if x["file"] == "broken.png" and x["source"] == str(images))
    assert broken["label"] == "ERROR" and "not a readable image" in broken["error"]
    good = [x for x in lines if x["label"] != "ERROR"]
    assert all(x["branches"] == ["language", "reference"] and x["settings"]["threshold"] == 0.7 for x in good)
    assert len(list((out / "overlays").glob("*.png"))) == 3 and len(list((out / "maps").glob("*.map.png"))) == 3
    printed = capsys.readouterr().out
    assert "ERROR=1" in printed and "p50 ms per stage: image_encoder" in printed


def test_bad_setting_is_refused_with_its_name(tiny_bundle, tmp_path, capsys):
    code = main(
        [
            str(tmp_path),
            "--bundle",
            str(tiny_bundle),
            "--category",
            "screw",
            "--out",
            str(tmp_path / "o"),
            "--threshold",
            "1.5",
        ]
    )
    assert code == 1 and "setting threshold: 1.5 must be <= 1.0" in capsys.readouterr().err
