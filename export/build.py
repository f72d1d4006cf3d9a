"""The export stage's one entry: build (or update) a bundle from specs."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from runtime.bundle.manifest import Manifest

from .clip_export import ClipSpec, export_clip
from .mllm_export import MllmSpec, export_mllm
from .patch_encoder import PatchSpec, export_patch_encoder
from .sam_export import SamSpec, export_sam
from .writer import BundleWriter

VERSIONED = (
    "lineside",
    "torch",
    "onnx",
    "onnxruntime",
    "open_clip_torch",
    "segment-anything",
    "timm",
    "llama_cpp_python",
    "numpy",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_bundle(
    out: Path,
    profile: str,
    clip: ClipSpec | None = None,
    sam: SamSpec | None = None,
    patch: PatchSpec | None = None,
    mllm: MllmSpec | None = None,
    external_data_threshold: int | None = None,
) -> Manifest:
    """Export the given components into `out` atomically and return the new manifest.

    `external_data_threshold` (bytes): see BundleWriter; None = environment or 1.8 GB.
    """
    with BundleWriter(out, profile, library_versions(), external_data_threshold) as writer:
        components = []
        if clip:
            components += export_clip(clip, writer)
        if sam:
            components += export_sam(sam, writer)
        if patch:
            components.append(export_patch_encoder(patch, writer))
        if mllm:
            components.append(export_mllm(mllm, writer))
        for component in components:
            writer.add(component)
        return writer.commit()
