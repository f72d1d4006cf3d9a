"""Open a bundle, prove it is the one export wrote, and hand out its sessions.

Every file is checked against its sha256 and every session's inputs and outputs
against the manifest before anything runs, so a half-copied or hand-edited bundle
fails at load with a message instead of producing wrong scores on the line.

    python -m runtime.check DIR      # verify, load every graph, run each once
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

from .manifest import BundleError, Component, FileEntry, Manifest, TensorSpec
from .session import OnnxSession

log = logging.getLogger("lineside.bundle")

ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
REBUILD = "rebuild it with python -m export (see models/README.md)"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """A verified bundle folder. Use `Bundle.open(path)`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path | str, verify_hashes: bool = True) -> Bundle:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"bundle folder {path} does not exist; build one with python -m export")
        bundle = cls(path, Manifest.read(path))
        for component in bundle.manifest.components.values():
            for entry in component.all_files():
                bundle._check_file(component.name, entry, verify_hashes)
        return bundle

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def component(self, name: str) -> Component:
        try:
            return self.manifest.components[name]
        except KeyError:
            have = ", ".join(sorted(self.manifest.components)) or "none"
            raise BundleError(f"{self.path} has no component {name!r} (it has: {have}); {REBUILD}") from None

    def precision_for(self, name: str, wanted: str) -> str:
        """`wanted` if this component has that variant, else fp32 (which every graph has)."""
        return wanted if wanted in self.component(name).files else "fp32"

    def file_path(self, entry: FileEntry) -> Path:
        return self.path / entry.path

    def session(
        self,
        name: str,
        precision: str = "fp32",
        providers: Sequence[str] = ("cpu",),
        **session_options,
    ) -> OnnxSession:
        """Load one graph and check its inputs and outputs against the manifest."""
        component = self.component(name)
        if precision not in component.files:
            have = ", ".join(component.files)
            raise BundleError(
                f"{name} has no {precision} graph in {self.path} (it has: {have}); "
                f"export it with --precisions {precision}"
            )
        if "tensorrt" in providers:
            session_options.setdefault("trt_profile", component.tensorrt_profile)
        session = OnnxSession(self.file_path(component.files[precision]), providers, **session_options)
        _check_io(f"{name} ({precision})", "input", component.inputs, session.session.get_inputs())
        _check_io(f"{name} ({precision})", "output", component.outputs, session.session.get_outputs())
        return session

    def _check_file(self, component: str, entry: FileEntry, verify_hashes: bool) -> None:
        path = self.file_path(entry)
        if not path.is_file():
            raise BundleError(f"{self.path}: {component} file {entry.path} is missing; {REBUILD}")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(
                f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated copy?); {REBUILD}"
            )
        if verify_hashes and (found := file_sha256(path)) != entry.sha256:
            raise BundleError(
                f"{path}: sha256 {found[:12]}… does not match the manifest's {entry.sha256[:12]}… "
                f"(the file was changed after export); {REBUILD}"
            )


def _check_io(what: str, role: str, expected: Sequence[TensorSpec], actual) -> None:
    """Compare the manifest's tensor list with what the session reports."""
    want = [t.name for t in expected]
    got = [a.name for a in actual]
    if want != got:
        raise BundleError(f"{what}: graph {role}s are {got}, the manifest says {want}; {REBUILD}")
    for spec, node in zip(expected, actual):
        dtype = ORT_DTYPES.get(node.type, node.type)
        if dtype != spec.dtype:
            raise BundleError(f"{what}: {role} {spec.name} is {dtype}, the manifest says {spec.dtype}; {REBUILD}")
        # A dimension that either side leaves symbolic is not compared.
        static_ok = len(node.shape) == len(spec.shape) and all(
            isinstance(m, str) or not isinstance(g, int) or m == g for m, g in zip(spec.shape, node.shape)
        )
        if not static_ok:
            raise BundleError(
                f"{what}: {role} {spec.name} has shape {list(node.shape)}, "
                f"the manifest says {list(spec.shape)}; {REBUILD}"
            )
