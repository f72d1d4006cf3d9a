"""The bundle manifest: the one place that names every file, tensor and constant.

Export writes it, the runtime reads it; both go through these dataclasses so the
two sides cannot drift apart. The JSON layout is documented in models/README.md.

Reading is strict: a manifest is a file anyone can edit, so every field is
checked for presence and type here (fields.py), and a bad one is refused with
its dotted name ("components.clip_image.files.fp32.sha256 is missing") instead
of surfacing later as a KeyError deep in the detector.

Each component states its `role` (what the runtime does with it) beside its
`kind` (the file format); the runtime finds a component by role
(`Manifest.by_role`), never by guessing from its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..precisions import PRECISIONS
from .fields import BundleError, an_object, describe, dotted, need, one_of, optional, relative_path, typed

SCHEMA = "lineside.bundle/2"  # /2: every component states its role
MANIFEST_NAME = "manifest.json"
KINDS = ("onnx", "gguf")  # gguf files are keyed by quantisation (Q4_1, ...), not by PRECISIONS
# role -> the kind its files have. At most one component per role in a bundle.
ROLES = {
    "image_encoder": "onnx",  # frames -> global embedding + patch tokens (config: grid, taps, branches)
    "text_encoder": "onnx",  # prompt token ids -> text embeddings (config: tokenizer)
    "sam_encoder": "onnx",  # SAM's image encoder
    "sam_decoder": "onnx",  # SAM's prompt encoder + mask decoder (config: mask_slots, mask_threshold)
    "language_model": "gguf",  # the prompt agent's language model (config: handler, vision, chat_format)
}
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
REBUILD_HINT = "rebuild the bundle with python -m export (see models/README.md)"
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- the manifest's parts ------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Dynamic dimensions are strings ("batch", "points")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: Any, at: str = "tensor") -> TensorSpec:
        d = an_object(d, at)
        name = need(d, "name", at, (str,), "a string")
        shape = need(d, "shape", at, (list,), "a list")
        for i, dim in enumerate(shape):
            typed(dim, f"{at}.shape[{i}]", (int, str), "an int or a dimension name")
            if isinstance(dim, int) and dim < 0:
                raise BundleError(f"{at}.shape[{i}] is {dim}; sizes are >= 0")
        dtype = need(d, "dtype", at, (str,), "a string")
        if dtype not in DTYPES:
            raise BundleError(f"{at}.dtype {dtype!r} is unknown; one of {', '.join(DTYPES)}")
        return cls(name, tuple(shape), dtype)

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
    def from_dict(cls, d: Any, at: str = "file") -> FileEntry:
        d = an_object(d, at)
        path = relative_path(need(d, "path", at, (str,), "a string"), dotted(at, "path"))
        sha256 = need(d, "sha256", at, (str,), "a string")
        if not _SHA256.fullmatch(sha256):
            raise BundleError(f"{dotted(at, 'sha256')} must be 64 lowercase hex digits, not {describe(sha256)}")
        size = need(d, "bytes", at, (int,), "an int")
        if size < 0:
            raise BundleError(f"{dotted(at, 'bytes')} is {size}; a size is >= 0")
        return cls(path, sha256, size, optional(d, "parity", at, (dict,), "an object", {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tensors(d: dict, key: str, at: str) -> tuple[TensorSpec, ...]:
    items = optional(d, key, at, (list,), "a list", [])
    return tuple(TensorSpec.from_dict(t, f"{dotted(at, key)}[{i}]") for i, t in enumerate(items))


def _files(d: dict, key: str, at: str) -> dict[str, FileEntry]:
    entries = optional(d, key, at, (dict,), "an object", {})
    return {k: FileEntry.from_dict(f, dotted(dotted(at, key), k)) for k, f in entries.items()}


@dataclass(frozen=True)
class Component:
    """One exported model (or data file set) and everything needed to run it.

    `role` says what the runtime does with it (one of ROLES), `kind` the file
    format. `files` maps a precision ("fp32", "fp16", "int8") to its graph;
    `assets` holds side files such as the tokenizer vocabulary. `preprocessing`
    and `config` hold the constants the runtime reads, per role, documented in
    models/README.md; `source` is provenance only.
    """

    name: str
    role: str
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
    def from_dict(cls, name: str, d: Any, at: str | None = None) -> Component:
        at = at or dotted("components", name)
        d = an_object(d, at)
        role = one_of(need(d, "role", at, (str,), "a string"), dotted(at, "role"), ROLES)
        kind = one_of(need(d, "kind", at, (str,), "a string"), dotted(at, "kind"), KINDS)
        if kind != ROLES[role]:
            raise BundleError(f"{dotted(at, 'kind')} {kind!r} does not fit role {role!r} (its files are {ROLES[role]})")
        keys = need(d, "files", at, (dict,), "an object")
        if not keys:
            raise BundleError(f"{dotted(at, 'files')} is empty; a component needs at least its fp32 file")
        if kind == "onnx" and (odd := [p for p in keys if p not in PRECISIONS]):
            where = dotted(dotted(at, "files"), odd[0])
            raise BundleError(f"{where}: unknown precision; one of {', '.join(PRECISIONS)}")
        files = _files(d, "files", at)
        blocks = {
            k: optional(d, k, at, (dict,), "an object", {})
            for k in ("preprocessing", "config", "source", "tensorrt_profile")
        }
        return cls(
            name,
            role,
            kind,
            files,
            _tensors(d, "inputs", at),
            _tensors(d, "outputs", at),
            _files(d, "assets", at),
            **blocks,
        )

    def to_dict(self) -> dict:
        return {
            "role": self.role,
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

    def identity(self) -> dict:
        """Every field that changes what this component computes, for `Manifest.bundle_id`.

        Parity figures, provenance (`source`, whose checkpoint already shows in the
        file hashes) and TensorRT shape hints are left out: they describe the
        graphs without changing their results.
        """
        ids = {"files": self.files, "assets": self.assets}
        return {
            **{k: {key: [f.path, f.sha256] for key, f in v.items()} for k, v in ids.items()},
            "role": self.role,
            "kind": self.kind,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "preprocessing": self.preprocessing,
            "config": self.config,
        }

    def all_files(self) -> list[FileEntry]:
        return [*self.files.values(), *self.assets.values()]


@dataclass(frozen=True)
class Manifest:
    """The whole manifest.json. `bundle_id` is derived from everything that changes results."""

    components: dict[str, Component]
    profile: str = "custom"
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    schema: str = SCHEMA

    def __post_init__(self):
        seen: dict[str, str] = {}
        for name, component in self.components.items():
            if (other := seen.setdefault(component.role, name)) != name:
                raise BundleError(
                    f"components.{name}.role {component.role!r} is components.{other}'s too; "
                    "a bundle has one component per role"
                )

    def by_role(self, role: str) -> Component | None:
        """The component with this role (one of ROLES), or None when the bundle has none."""
        if role not in ROLES:
            raise ValueError(f"unknown component role {role!r}; one of {', '.join(ROLES)}")
        return next((c for c in self.components.values() if c.role == role), None)

    @cached_property
    def bundle_id(self) -> str:
        """First 16 hex of sha256 over canonical JSON (sorted keys) of each component's identity.

        Caches keyed by it (text embeddings) can never serve a bundle whose
        graphs, tensors, preprocessing or config differ from the one they were
        computed for.
        """
        payload = {name: c.identity() for name, c in self.components.items()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: Any, where: Path | str = "manifest") -> Manifest:
        """Parse and check a loaded manifest; every refusal is one line naming `where` and the field."""
        try:
            return cls._parse(d, where)
        except BundleError as e:
            hint = "" if "python -m export" in str(e) else f"; {REBUILD_HINT}"
            raise BundleError(f"{where}: {e}{hint}") from e

    @classmethod
    def _parse(cls, d: Any, where: Path | str) -> Manifest:
        if not isinstance(d, dict):
            raise BundleError(f"the top level must be an object, not {describe(d)}")
        if (schema := d.get("schema")) != SCHEMA:
            raise BundleError(
                f"unknown bundle schema {schema!r}; this runtime reads {SCHEMA!r} only "
                f"(this bundle was written by another version of lineside): {REBUILD_HINT}"
            )
        raw = need(d, "components", "", (dict,), "an object")
        if not raw:
            raise BundleError(
                "components is empty: the bundle has no graphs; export them into it, "
                "e.g. python -m export all --profile tiny --out DIR"
            )
        components = {n: Component.from_dict(n, c) for n, c in raw.items()}
        profile = optional(d, "profile", "", (str,), "a string", "custom")
        created = optional(d, "created", "", (str,), "a string", "")
        return cls(components, profile, created, optional(d, "versions", "", (dict,), "an object", {}))

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
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                raise BundleError(f"{path}: the manifest is empty (an interrupted copy?); {REBUILD_HINT}")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"{path}: unreadable manifest ({e}); {REBUILD_HINT}") from e
        return cls.from_dict(data, where=path)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path
