"""Folder sources decode ahead of inspection in threads, and still hand frames over in name order."""

import cv2
import numpy as np

from runtime.serve.frames.folders import FolderSource


def test_read_ahead_keeps_name_order_and_each_bad_file_in_its_place(tmp_path):
    for i in range(9):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((40, 30 + i, 3), i, np.uint8))
    (tmp_path / "04b.png").write_bytes(b"not a png")
    source = FolderSource(str(tmp_path), tmp_path, workers=3)
    source.open()
    seen = []
    while True:
        ok, image, note = source.read()
        if not ok:
            break
        seen.append((source.last_file, None if image is None else image.shape[1], note))
    source.close()
    assert [name for name, _, _ in seen] == sorted(p.name for p in tmp_path.iterdir())
    assert [width for _, width, _ in seen] == [30, 31, 32, 33, 34, None, 35, 36, 37, 38]
    assert "04b.png" in seen[5][2] and "not a readable image" in seen[5][2]


def test_reopening_starts_again_and_close_leaves_no_decoder_running(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((20, 20, 3), np.uint8))
    source = FolderSource(str(tmp_path), tmp_path, workers=2)
    source.open()
    assert source.read()[0] and source.last_file == "0.png"
    source.open()  # a looped recording
    assert source.read()[0] and source.last_file == "0.png"
    source.close()
    assert source._pool is None and not source._ahead
