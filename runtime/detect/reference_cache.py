"""Reference memories kept on disk, so that a reference set is encoded, subsampled and indexed once.

A file is named by a hash of everything that shapes the memory: the images'
content key, the encoder's identity (graph, precision, hash), the coreset ratio
and seed, the search it was indexed for and this format's version. A file that
cannot be read, or holds something else, is ignored (and rebuilt): the cache
can only save time, never change a result. Files are written whole (a temporary
file renamed), as plain .npz arrays (no pickle).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .text_encoder import default_cache_dir

log = logging.getLogger("lineside.references")

FORMAT = 2


def cache_dir(reference_cache_dir: Path | None, text_cache_dir: Path | None) -> Path:
    """Where memories are kept: the setting, else beside the text cache (~/.cache/lineside/references)."""
    if reference_cache_dir is not None:
        return Path(reference_cache_dir)
    return Path(text_cache_dir or default_cache_dir()).parent / "references"


def cache_file(folder: Path, key: str, encoder: str, coreset_ratio: float, seed: int, index: str) -> Path:
    shape = f"{FORMAT}|{key}|{encoder}|{coreset_ratio!r}|{seed}|{index}"
    return Path(folder) / (hashlib.blake2b(shape.encode(), digest_size=16).hexdigest() + ".npz")


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically; a cache that cannot be written is a warning, not a failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        log.warning("reference memory not cached in %s: %s", path.parent, e)


def load(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays saved at `path`, or None when there are none (or they cannot be read)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        log.warning("cached reference memory %s unreadable (%s); rebuilding it", path, e)
        return None
