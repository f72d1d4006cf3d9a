"""The bundle manifest: the one place that names every file, tensor and constant.

Export writes it, the runtime reads it; both go through these dataclasses so the
two sides cannot drift apart. The JSON layout is documented in models/README.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "lineside.bundle/1"
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message says how to rebuild it."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Dynamic dimensions are strings ("batch", "points")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle, relative to its folder, with what export measured of it."""

    path: str
    sha256: str
    bytes: int
    parity: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> FileEntry:
        return cls(d["path"], d["sha256"], int(d["bytes"]), d.get("parity", {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Component:
    """One exported model (or data file set) and everything needed to run it.

    `files` maps a precision ("fp32", "fp16", "int8") to its graph; `assets` holds
    side files such as the tokenizer vocabulary. `preprocessing` and `config` are
    free-form per component kind and documented in models/README.md.
    """

    name: str
    kind: str
    files: dict[str, FileEntry]
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    assets: dict[str, FileEntry] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    tensorrt_profile: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, d: dict) -> Component:
        return cls(
            name=name,
            kind=d["kind"],
            files={p: FileEntry.from_dict(f) for p, f in d["files"].items()},
            inputs=tuple(TensorSpec.from_dict(t) for t in d.get("inputs", [])),
            outputs=tuple(TensorSpec.from_dict(t) for t in d.get("outputs", [])),
            assets={k: FileEntry.from_dict(f) for k, f in d.get("assets", {}).items()},
            preprocessing=d.get("preprocessing", {}),
            config=d.get("config", {}),
            source=d.get("source", {}),
            tensorrt_profile=d.get("tensorrt_profile", {}),
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "files": {p: f.to_dict() for p, f in self.files.items()},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "assets": {k: f.to_dict() for k, f in self.assets.items()},
            "preprocessing": self.preprocessing,
            "config": self.config,
            "source": self.source,
            "tensorrt_profile": self.tensorrt_profile,
        }

    def all_files(self) -> list[FileEntry]:
        return [*self.files.values(), *self.assets.values()]


@dataclass(frozen=True)
class Manifest:
    """The whole manifest.json. `bundle_id` is derived from the file hashes."""

    components: dict[str, Component]
    profile: str = "custom"
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def bundle_id(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.components):
            for entry in sorted(self.components[name].all_files(), key=lambda f: f.path):
                digest.update(f"{name}:{entry.path}:{entry.sha256};".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict, where: Path | str = "manifest") -> Manifest:
        schema = d.get("schema")
        if schema != SCHEMA:
            raise BundleError(
                f"{where}: unknown bundle schema {schema!r}; this runtime reads {SCHEMA!r}. "
                "Rebuild the bundle with this version's exporter: python -m export all --profile ..."
            )
        try:
            components = {n: Component.from_dict(n, c) for n, c in d["components"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: malformed manifest ({e!r}); rebuild the bundle") from e
        return cls(components, d.get("profile", "custom"), d.get("created", ""), d.get("versions", {}))

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "bundle_id": self.bundle_id,
            "profile": self.profile,
            "created": self.created,
            "versions": self.versions,
            "components": {n: c.to_dict() for n, c in sorted(self.components.items())},
        }

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(
                f"{folder} is not a bundle: {MANIFEST_NAME} is missing. "
                "Build one with: python -m export all --profile tiny --out DIR"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{path}: unreadable manifest ({e}); rebuild the bundle") from e
        return cls.from_dict(data, where=path)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path
