"""NG images on disk under a cap, touching only files serve itself created.

The folder may hold anything of the user's (a backup, notes): serve never
deletes or overwrites a file it did not write. Every file it writes is created
exclusively (an existing name gets a numbered variant instead) and recorded in
an index kept in the folder (INDEX, one JSON line per NG frame, reloaded at
start so the cap holds across restarts). Only indexed files are ever rotated
out, oldest first, and only while they still have the size and time recorded
when serve wrote them (a file a user has since replaced is not serve's to
delete).

Files are named after what they show: `[CAMERA_][PART_]RUN_FRAME.jpg`, where
PART is the part id, else the stem of the image or video file the frame came
from, each reduced to letters, digits, dot, dash and underscore. The sidecar
JSON is the NG line; when the language model's EXPLANATION line for that frame
reaches the sink later, its explanation replaces the one in the sidecar.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import stat
from pathlib import Path

import cv2

from .records import strict_json
from .sinks import Sink

log = logging.getLogger("lineside.serve")

INDEX = ".lineside-ng-index.jsonl"
NAME_PART = 64  # characters of one part of a file name (camera, part id, file stem)
REMEMBERED = 4096  # NG frames whose sidecar an explanation can still reach


def name_part(text: str) -> str:
    """`text` safe as part of a file name: no separators, no leading dot, at most NAME_PART characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).lstrip(".-")[:NAME_PART]


def ng_stem(record: dict) -> str:
    """`[camera_][part_]run_frame`: the part id, else the stem of the frame's image or video file."""
    part = record.get("part_id") or Path(record.get("file") or "").stem
    if not part and record.get("frame_index") is not None:  # a video: frames are named after the file
        part = Path(record.get("source") or "").stem
    words = [name_part(record.get("camera") or ""), name_part(part or ""), name_part(record["run"])]
    return "_".join([w for w in words if w] + [f"{int(record['frame_id']):08d}"])


def frame_key(record: dict) -> tuple:
    """What names one frame across cameras: (run, camera, frame_id)."""
    return record.get("run"), record.get("camera", ""), record.get("frame_id")


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

    def replace(self, old: Path, new: Path) -> bool:
        """`new` (written beside it) takes the place of `old`, an indexed file still as serve wrote it;
        False (and `new` removed) when `old` is no longer serve's to replace."""
        for entry in self.entries:
            for row in entry:
                if row[0] == old.name and self._unchanged(*row):
                    os.replace(new, old)
                    st = old.stat()
                    row[1:] = [st.st_size, st.st_mtime_ns]
                    self.rewrite()
                    return True
        new.unlink()
        return False

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
        self.sidecars: collections.OrderedDict[tuple, Path] = collections.OrderedDict()  # frame_key -> sidecar

    def offer(self, record: dict, frame=None) -> None:
        label = record.get("label")
        if (label == "NG" and frame is not None) or label == "EXPLANATION":
            super().offer(record, frame)

    def deliver(self, record, frame) -> None:
        if record.get("label") == "EXPLANATION":
            self._explain(record)
            return
        ok, jpeg = cv2.imencode(".jpg", frame)
        if not ok:
            raise OSError(f"frame {record['frame_id']} could not be encoded as JPEG")
        image = create_exclusive(self.folder / ng_stem(record), ".jpg", jpeg.tobytes())
        try:
            sidecar = create_exclusive(
                image.with_suffix(""), ".json", json.dumps(record, indent=1, allow_nan=False).encode()
            )
        except (OSError, ValueError):
            image.unlink()  # created a moment ago by us: ours to remove
            raise
        self.index.add([image, sidecar])
        self.sidecars[frame_key(record)] = sidecar
        while len(self.sidecars) > REMEMBERED:
            self.sidecars.popitem(last=False)
        self._rotate()

    def _explain(self, line: dict) -> None:
        """The EXPLANATION line's explanation into its frame's sidecar, if serve wrote it and still holds it."""
        sidecar = self.sidecars.get(frame_key(line))
        if sidecar is None or not sidecar.exists():
            return  # not an NG frame this sink saved (another camera's, or rotated out)
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        record["explanation"] = line.get("explanation") or {"text": line.get("text", "")}
        record["explained_at"] = line.get("explained_at")
        body = json.dumps(record, indent=1, allow_nan=False).encode()
        fresh = create_exclusive(sidecar.with_name(f".{sidecar.stem}.explained"), ".tmp", body)
        if not self.index.replace(sidecar, fresh):
            log.warning("NG folder: %s changed since serve wrote it; its explanation is not added", sidecar)

    def _rotate(self) -> None:
        """Oldest indexed NG frames out until serve's files (and the index) fit the cap.

        Dropped entries stay in the index file until it is compacted, which
        happens once they outnumber the live ones (so not on every NG frame).
        """
        while self.index.entries and self.index.bytes() > self.cap:
            self.index.remove_oldest()
        if self.index.lines > 2 * len(self.index.entries) + 16:
            self.index.rewrite()
