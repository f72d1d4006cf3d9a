"""Overlays agree with their verdicts: contours on NG frames only, the verdict large, the known label beside it."""

from __future__ import annotations

import numpy as np

from runtime.detect.overlay import COLOURS, render
from runtime.detect.result import Region, Result

BOX = (100, 120, 200, 220)  # x0, y0, x1, y1


def _result(label: str) -> Result:
    x0, y0, x1, y1 = BOX
    mask = np.zeros((300, 300), bool)
    mask[y0:y1, x0:x1] = True
    region = Region(
        mask, BOX, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], int(mask.sum()), 0.9, "a crack", 0.8, "contours"
    )
    return Result(label, 0.62, np.zeros((300, 300), np.float32), [region], settings={"threshold": 0.55})


def _contour_pixels(canvas: np.ndarray) -> int:
    """White pixels on the box's left edge (the heatmap of a zero map is dark blue, the frame black)."""
    x0, y0, _, y1 = BOX
    edge = canvas[y0 + 10 : y1 - 10, x0 - 1 : x0 + 2]
    return int((edge.min(axis=2) > 200).sum())


def test_ng_frames_show_their_regions_and_ok_frames_show_none():
    frame = np.zeros((300, 300, 3), np.uint8)
    assert _contour_pixels(render(frame, _result("NG"))) > 50
    assert _contour_pixels(render(frame, _result("OK"))) == 0


def test_the_verdict_is_a_banner_in_its_colour():
    frame = np.full((300, 300, 3), 200, np.uint8)
    for label in ("OK", "NG"):
        canvas = render(frame, _result(label))
        banner = canvas[:36].reshape(-1, 3)
        assert (np.abs(banner.astype(int) - COLOURS[label]).sum(axis=1) < 30).sum() > 100, label  # large text
        assert canvas[:36].mean() < canvas[150:].mean()  # darkened under the text


def test_the_known_label_stands_beside_the_verdict():
    frame = np.zeros((300, 300, 3), np.uint8)
    plain = render(frame, _result("OK"))
    known = render(frame, _result("OK"), truth="defective")
    assert not np.array_equal(plain[:36], known[:36]) and np.array_equal(plain[36:], known[36:])
