"""The bundle manifest: the one place that names every file, tensor and constant.

Export writes it, the runtime reads it; both go through these dataclasses so the
two sides cannot drift apart. The JSON layout is documented in models/README.md.

Reading is strict: a manifest is a file anyone can edit, so every field is
checked for presence and type here, and a bad one is refused with its dotted
name ("components.clip_image.files.fp32.sha256 is missing") instead of
surfacing later as a KeyError deep in the detector.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

SCHEMA = "lineside.bundle/1"
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("onnx", "gguf")  # gguf files are keyed by quantisation (Q4_1, ...), not by PRECISIONS
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
REBUILD_HINT = "rebuild the bundle with python -m export (see models/README.md)"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN_KEY = re.compile(r"[\w+-]+")


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message says how to rebuild it."""


# --- field checks: each names the dotted field and the bad value ------------------


def describe(value: Any) -> str:
    """A short one-line description of a JSON value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _key(at: str, key: Any) -> str:
    """The dotted name of `key` under `at`; odd keys are quoted so the message stays one line."""
    key = str(key)
    if not _PLAIN_KEY.fullmatch(key):
        return f"{at}[{key!r}]"
    return f"{at}.{key}" if at else key


def _typed(value: Any, at: str, kinds: tuple[type, ...], what: str) -> Any:
    """`value` if it is one of `kinds` (a bool is never an int here), else BundleError."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise BundleError(f"{at} must be {what}, not {describe(value)}")
    return value


def _need(d: dict, key: str, at: str, kinds: tuple[type, ...], what: str) -> Any:
    if key not in d:
        raise BundleError(f"{_key(at, key)} is missing")
    return _typed(d[key], _key(at, key), kinds, what)


def _opt(d: dict, key: str, at: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
    return _typed(d[key], _key(at, key), kinds, what) if key in d else default


def _object(value: Any, at: str) -> dict:
    return _typed(value, at, (dict,), "an object")


def _relative_path(path: str, at: str) -> str:
    """Refuse paths that could name a file outside the bundle folder, whatever the OS."""
    if not path or "\x00" in path:
        raise BundleError(f"{at} must be a non-empty relative path, not {path!r}")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
        raise BundleError(f"{at} {path!r} is absolute; bundle files must lie inside the bundle folder")
    if ".." in PurePosixPath(path).parts or ".." in PureWindowsPath(path).parts:
        raise BundleError(f"{at} {path!r} climbs out with '..'; bundle files must lie inside the bundle folder")
    return path


# --- the manifest's parts ------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Dynamic dimensions are strings ("batch", "points")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: Any, at: str = "tensor") -> TensorSpec:
        d = _object(d, at)
        name = _need(d, "name", at, (str,), "a string")
        shape = _need(d, "shape", at, (list,), "a list")
        for i, dim in enumerate(shape):
            _typed(dim, f"{at}.shape[{i}]", (int, str), "an int or a dimension name")
            if isinstance(dim, int) and dim < 0:
                raise BundleError(f"{at}.shape[{i}] is {dim}; sizes are >= 0")
        dtype = _need(d, "dtype", at, (str,), "a string")
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
        d = _object(d, at)
        path = _relative_path(_need(d, "path", at, (str,), "a string"), _key(at, "path"))
        sha256 = _need(d, "sha256", at, (str,), "a string")
        if not _SHA256.fullmatch(sha256):
            raise BundleError(f"{_key(at, 'sha256')} must be 64 lowercase hex digits, not {describe(sha256)}")
        size = _need(d, "bytes", at, (int,), "an int")
        if size < 0:
            raise BundleError(f"{_key(at, 'bytes')} is {size}; a size is >= 0")
        return cls(path, sha256, size, _opt(d, "parity", at, (dict,), "an object", {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tensors(d: dict, key: str, at: str) -> tuple[TensorSpec, ...]:
    items = _opt(d, key, at, (list,), "a list", [])
    return tuple(TensorSpec.from_dict(t, f"{_key(at, key)}[{i}]") for i, t in enumerate(items))


def _files(d: dict, key: str, at: str) -> dict[str, FileEntry]:
    entries = _opt(d, key, at, (dict,), "an object", {})
    return {k: FileEntry.from_dict(f, _key(_key(at, key), k)) for k, f in entries.items()}


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
    def from_dict(cls, name: str, d: Any, at: str | None = None) -> Component:
        at = at or _key("components", name)
        d = _object(d, at)
        kind = _need(d, "kind", at, (str,), "a string")
        if kind not in KINDS:
            raise BundleError(f"{_key(at, 'kind')} {kind!r} is unknown; one of {', '.join(KINDS)}")
        keys = _need(d, "files", at, (dict,), "an object")
        if not keys:
            raise BundleError(f"{_key(at, 'files')} is empty; a component needs at least its fp32 file")
        if kind == "onnx" and (odd := [p for p in keys if p not in PRECISIONS]):
            raise BundleError(f"{_key(_key(at, 'files'), odd[0])}: unknown precision; one of {', '.join(PRECISIONS)}")
        files = _files(d, "files", at)
        blocks = {k: _opt(d, k, at, (dict,), "an object", {})
                  for k in ("preprocessing", "config", "source", "tensorrt_profile")}  # fmt: skip
        return cls(name, kind, files, _tensors(d, "inputs", at), _tensors(d, "outputs", at),
                   _files(d, "assets", at), **blocks)  # fmt: skip

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

    def identity(self) -> dict:
        """Every field that changes what this component computes, for `Manifest.bundle_id`.

        Parity figures, provenance (`source`, whose checkpoint already shows in the
        file hashes) and TensorRT shape hints are left out: they describe the
        graphs without changing their results.
        """
        ids = {"files": self.files, "assets": self.assets}
        return {
            **{k: {key: [f.path, f.sha256] for key, f in v.items()} for k, v in ids.items()},
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
            raise BundleError(f"unknown bundle schema {schema!r}; this runtime reads {SCHEMA!r}")
        raw = _need(d, "components", "", (dict,), "an object")
        if not raw:
            raise BundleError("components is empty: the bundle has no graphs; export them into it, "
                              "e.g. python -m export all --profile tiny --out DIR")  # fmt: skip
        components = {n: Component.from_dict(n, c) for n, c in raw.items()}
        profile = _opt(d, "profile", "", (str,), "a string", "custom")
        created = _opt(d, "created", "", (str,), "a string", "")
        return cls(components, profile, created, _opt(d, "versions", "", (dict,), "an object", {}))

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
