"""Building an open_clip model for export: architecture presets and weight sources.

Presets are data: the V-V start block, tap layers and image size per named
architecture (DESIGN.md's defaults); any other open_clip ViT gets a rule from
its depth. Weights come from open_clip's own pretrained download, a local
checkpoint file, or random initialisation for tests and speed work.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from .checkpoints import file_source, mismatch_report, read_state_dict

log = logging.getLogger("lineside.export")

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class ClipPreset:
    """Defaults for one architecture. Blocks and taps count from 1 (block 1 = first)."""

    image_size: int
    vv_from: int
    taps: tuple[int, ...]


CLIP_PRESETS = {
    "ViT-B-16": ClipPreset(image_size=224, vv_from=4, taps=(6, 9, 12)),
    "ViT-B-16-plus-240": ClipPreset(image_size=240, vv_from=4, taps=(6, 9, 12)),
    "ViT-L-14-336": ClipPreset(image_size=518, vv_from=6, taps=(6, 12, 18, 24)),
    "lineside-tiny-clip": ClipPreset(image_size=64, vv_from=2, taps=(2, 3, 4)),
}

LICENSES = {
    "openai": "OpenAI CLIP weights (MIT code license; see the OpenAI CLIP model card)",
    "laion": "OpenCLIP LAION weights (MIT)",
    "datacomp": "OpenCLIP DataComp weights (MIT)",
}


def preset_for(arch: str, depth: int) -> ClipPreset:
    """The named preset, or V-V in the last three quarters and taps at 1/2, 3/4, 1."""
    if arch in CLIP_PRESETS:
        return CLIP_PRESETS[arch]
    cfg = open_clip.get_model_config(arch) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return ClipPreset(size, depth - (3 * depth) // 4 + 1, (depth // 2, (3 * depth) // 4, depth))


def check_arch(arch: str) -> None:
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown open_clip architecture {arch!r}.{hint} (open_clip.list_models() lists all)")


def load_clip(
    arch: str,
    pretrained: str | None = None,
    checkpoint: Path | None = None,
    image_size: int | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Model in eval mode and its provenance. No weights given = random init."""
    check_arch(arch)
    if pretrained and checkpoint:
        raise ValueError("give --pretrained or --checkpoint, not both")
    kwargs = {"force_image_size": image_size} if image_size else {}
    source = {"library": "open_clip", "library_version": open_clip.__version__, "architecture": arch}
    if pretrained:
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, **kwargs)
        except Exception as e:  # download and lookup errors come in many types
            raise RuntimeError(
                f"could not get pretrained weights {pretrained!r} for {arch}: {e}. Where the model hub is "
                "unreachable, download the checkpoint elsewhere and pass --checkpoint FILE"
            ) from e
        family = next((k for k in LICENSES if pretrained.startswith(k)), None)
        source |= {"pretrained": pretrained, "license": LICENSES.get(family, "see the pretrained tag's model card")}
    else:
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
        if checkpoint:
            _load_checkpoint(model, Path(checkpoint), arch)
            source |= file_source(Path(checkpoint)) | {"license": "as stated by the checkpoint's publisher"}
        else:
            source |= {"random_init": True, "license": "none (random weights: plumbing and speed only)"}
    return model.eval(), source


def _load_checkpoint(model: torch.nn.Module, path: Path, arch: str) -> None:
    """open_clip's loader (it converts OpenAI/timm layouts and resizes position embeddings)."""
    try:
        open_clip.load_checkpoint(model, str(path))
    except RuntimeError as e:
        report = mismatch_report(model.state_dict(), read_state_dict(path))
        raise ValueError(f"checkpoint {path} is not a {arch} checkpoint: {report}") from e
