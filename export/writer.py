"""Write a bundle atomically: everything goes to a hidden sibling folder first.

Only when every graph is exported, measured and hashed is the manifest written
and the folder renamed into place, so an interrupted or failed export never
leaves a folder that looks like a complete bundle. Exporting into an existing
bundle keeps its other components (hard-linked, or copied across devices).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from pathlib import Path

from runtime.bundle.loader import file_sha256
from runtime.bundle.manifest import MANIFEST_NAME, Component, FileEntry, Manifest

from .graph_files import threshold_from_env

log = logging.getLogger("lineside.export")


class BundleWriter:
    """Collect components in a temporary folder, then swap it in with `commit()`.

    `external_data_threshold`: graphs whose tensors exceed this many bytes are
    written with an external data file (graph_files); None = the environment's
    LINESIDE_EXTERNAL_DATA_THRESHOLD_BYTES, else 1.8 GB.
    """

    def __init__(
        self,
        out: Path | str,
        profile: str = "custom",
        versions: dict | None = None,
        external_data_threshold: int | None = None,
    ):
        self.out = Path(out).absolute()
        self.profile = profile
        self.versions = versions or {}
        self.external_data_threshold = (
            threshold_from_env() if external_data_threshold is None else external_data_threshold
        )
        self.existing = self._existing_manifest()
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _sweep_stale(parent, self.out.name)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-{os.getpid()}-", dir=parent))
        except OSError as e:
            raise PermissionError(f"cannot write a bundle under {parent}: {e.strerror}; choose another --out") from e
        self.components: dict[str, Component] = {}

    def _existing_manifest(self) -> Manifest | None:
        if not self.out.exists():
            return None
        if not self.out.is_dir():
            raise FileExistsError(f"--out {self.out} is a file, not a bundle folder")
        if (self.out / MANIFEST_NAME).is_file():
            return Manifest.read(self.out)
        if any(self.out.iterdir()):
            raise FileExistsError(f"--out {self.out} exists, is not empty and is not a bundle; choose another folder")
        return None

    def path(self, relative: str) -> Path:
        """Where to write a bundle file now (inside the temporary folder)."""
        target = self.tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def entry(self, relative: str, parity: dict | None = None) -> FileEntry:
        """Hash a file already written under `path(relative)`."""
        target = self.tmp / relative
        return FileEntry(relative, file_sha256(target), target.stat().st_size, parity or {})

    def add(self, component: Component) -> None:
        self.components[component.name] = component

    def commit(self) -> Manifest:
        """Carry over untouched components, write the manifest, rename into place.

        A bundle has one component per role: an old component whose role a new one takes
        (a patch encoder when CLIP's image tower is exported into its bundle) is dropped.
        """
        if self.existing:
            roles = {c.role: c.name for c in self.components.values()}
            for name, component in self.existing.components.items():
                if name not in self.components and component.role in roles:
                    log.info("%s replaces %s as the bundle's %s", roles[component.role], name, component.role)
                elif name not in self.components:
                    for entry in component.all_files():
                        _link_or_copy(self.out / entry.path, self.path(entry.path))
                    self.components[name] = component
        manifest = Manifest(
            components=self.components,
            profile=self.profile,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            versions=self.versions,
        )
        manifest.write(self.tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp made it private; a bundle is not
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("bundle %s written to %s", manifest.bundle_id, self.out)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # KeyboardInterrupt included
            self.abort()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _sweep_stale(parent: Path, name: str) -> None:
    """Remove partial folders left by exports that were killed (their process is gone)."""
    for partial in parent.glob(f".{name}.partial-*-*"):
        pid = partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted export", partial)
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
