"""NG images on disk under a cap, touching only files serve itself created.

The folder may hold anything of the user's (a backup, notes): serve never
deletes or overwrites a file it did not write. Every file it writes is created
exclusively (an existing name gets a numbered variant instead) and recorded in
an index kept in the folder (INDEX, one JSON line per NG frame, reloaded at
start so the cap holds across restarts). Only indexed files are ever rotated
out, oldest first, and only while they still have the size and time recorded
when serve wrote them (a file a user has since replaced is not serve's to
delete).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import cv2

from .records import strict_json
from .sinks import Sink

log = logging.getLogger("lineside.serve")

INDEX = ".lineside-ng-index.jsonl"


def create_exclusive(stem: Path, suffix: str, data: bytes) -> Path:
    """Write `data` to a new file stem+suffix (or stem-1+suffix, ...); never replaces an existing file."""
    for n in range(1000):
        path = Path(f"{stem}{'' if n == 0 else f'-{n}'}{suffix}")
        try:
            with open(path, "xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
    raise OSError(f"no free name for {stem}{suffix} after 1000 tries")


class NgIndex:
    """The files serve wrote in one NG folder: [{"files": [[name, size, mtime_ns], ...]}, ...], oldest first."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / INDEX
        self.lines = 0  # lines in the index file, live or not
        self.entries: list[list[list]] = self._load()

    def _load(self) -> list:
        """The index's entries whose files are still as serve wrote them (dropped ones, deleted or changed, go)."""
        if not self.path.exists():
            return []
        if not self.path.is_file():
            raise ValueError(f"--save-ng: {self.path} exists and is not a file; remove it or choose another folder")
        entries, lines = [], self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for n, text in enumerate(lines, 1):
            try:
                files = [f for f in self._checked(json.loads(text)["files"]) if self._unchanged(*f)]
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is not an index entry: ignored (no file of it is touched)", self.path, n)
                continue
            if files:
                entries.append(files)
        self.lines = len(lines)
        return entries

    @staticmethod
    def _checked(files) -> list:
        return [[str(name), int(size), int(mtime)] for name, size, mtime in files if "/" not in str(name)]

    def _unchanged(self, name: str, size: int, mtime: int) -> bool:
        """The file is there, a regular file, with the size and time it had when serve wrote it."""
        try:
            st = (self.folder / name).lstat()
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime

    def bytes(self) -> int:
        own = sum(size for entry in self.entries for _, size, _ in entry)
        return own + (self.path.stat().st_size if self.path.exists() else 0)

    def add(self, paths: list[Path]) -> None:
        entry = [[p.name, (st := p.stat()).st_size, st.st_mtime_ns] for p in paths]
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(strict_json({"files": entry}) + "\n")
        self.entries.append(entry)
        self.lines += 1

    def remove_oldest(self) -> None:
        """Delete the oldest entry's files (those still as serve wrote them) and forget the entry."""
        for name, size, mtime in self.entries.pop(0):
            if self._unchanged(name, size, mtime):
                (self.folder / name).unlink()
            elif (self.folder / name).exists():
                log.warning("NG folder: %s changed since serve wrote it; left in place", self.folder / name)

    def rewrite(self) -> None:
        """Write the index afresh (only the live entries), atomically: a crash keeps the old or the new one."""
        tmp = self.folder / f"{INDEX}.{os.getpid()}.tmp"
        body = "".join(strict_json({"files": e}) + "\n" for e in self.entries)
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            log.warning("NG folder: %s exists (not serve's?); index not compacted", tmp)
            return
        os.replace(tmp, self.path)
        self.lines = len(self.entries)


class NgImageSink(Sink):
    """NG frames as JPEG with a JSON sidecar, under a disk cap on serve's own files (oldest removed first)."""

    def __init__(self, folder: Path, cap_mb: float, metrics, maxsize: int):
        super().__init__(f"ng:{folder}", metrics, maxsize)
        self.folder, self.cap = Path(folder), int(cap_mb * 1e6)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise ValueError(f"--save-ng {folder}: not a folder ({e})") from e
        self.index = NgIndex(self.folder)

    def offer(self, record: dict, frame=None) -> None:
        if record.get("label") == "NG" and frame is not None:
            super().offer(record, frame)

    def deliver(self, record, frame) -> None:
        ok, jpeg = cv2.imencode(".jpg", frame)
        if not ok:
            raise OSError(f"frame {record['frame_id']} could not be encoded as JPEG")
        stem = self.folder / f"{record['run']}_{record['frame_id']:08d}"
        image = create_exclusive(stem, ".jpg", jpeg.tobytes())
        try:
            sidecar = create_exclusive(
                image.with_suffix(""), ".json", json.dumps(record, indent=1, allow_nan=False).encode()
            )
        except (OSError, ValueError):
            image.unlink()  # created a moment ago by us: ours to remove
            raise
        self.index.add([image, sidecar])
        self._rotate()

    def _rotate(self) -> None:
        """Oldest indexed NG frames out until serve's files (and the index) fit the cap.

        Dropped entries stay in the index file until it is compacted, which
        happens once they outnumber the live ones (so not on every NG frame).
        """
        while self.index.entries and self.index.bytes() > self.cap:
            self.index.remove_oldest()
        if self.index.lines > 2 * len(self.index.entries) + 16:
            self.index.rewrite()
