"""Image folders as a source: every file inspected in name order, decoded ahead in threads.

A folder is not live: nothing is dropped. One bad file (corrupt, a decompression
bomb, a FIFO, a name that is not UTF-8) is that file's frame without an image,
whose note names the file, and the folder goes on.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...detect.frames import IMAGE_SUFFIXES, ImageError, printable, read_frame
from ...settings import MAX_IMAGE_PIXELS
from .sources import FrameSource


class FolderSource(FrameSource):
    """Image files of a folder in name order, read as bytes and bounded before decoding.

    Files are read and decoded by `workers` threads a few files ahead of the
    inspector (OpenCV's decoders release the GIL), so that decoding a large PNG
    never sets the pace when inference is faster than one decode; frames still
    come out in name order, one ERROR note per bad file.
    """

    live = False

    def __init__(self, spec: str, folder: Path, max_pixels: int = MAX_IMAGE_PIXELS, workers: int = 2):
        super().__init__(spec)
        self.folder, self.max_pixels, self.files, self.index = folder, max_pixels, [], 0
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: collections.deque = collections.deque()  # (path, future) in name order

    def probe(self) -> None:
        if not self._list():
            raise ValueError(f"--source {self.spec!r}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def _list(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as e:
            raise ConnectionError(f"cannot list folder {self.spec!r}: {e}") from e

    def open(self) -> None:
        self.files = self._list()
        if not self.files:
            raise ConnectionError(f"folder {self.folder} holds no images")
        self.index = 0
        self.close()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    def read(self):
        while self._pool is not None and len(self._ahead) < 2 * self.workers and self.index < len(self.files):
            path = self.files[self.index]
            self.index += 1
            self._ahead.append((path, self._pool.submit(self._load, path)))
        if not self._ahead:
            return False, None, "end of folder"
        path, future = self._ahead.popleft()
        self.last_file = printable(path.name)
        self.last_index = self.index - len(self._ahead) - 1  # (files are submitted in order, so this is its place)
        return future.result()

    def _load(self, path: Path) -> tuple[bool, np.ndarray | None, str]:
        try:
            return True, read_frame(path, self.max_pixels), ""
        except (ImageError, OSError) as e:  # one bad file is that file's ERROR line, never the source's end
            return True, None, printable(str(e))  # the message names the file

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead.clear()
