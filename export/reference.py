"""The detector's language-branch scoring written again in torch, from the eager model.

It shares nothing numeric with the runtime: embeddings come from open_clip's own
tokenizer and the eager graphs, and softmax, upsampling and smoothing are torch
ops. Tests compare its maps and scores with the runtime's on the tiny bundle.
"""

from __future__ import annotations

import math

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from runtime.detect.prompt_bank import ABNORMAL_STATES, NORMAL_STATES, ensemble

from .clip_graphs import ClipImageGraph, ClipTextGraph


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1, 1, H, W), separable Gaussian, reflected borders (OpenCV's BORDER_REFLECT_101)."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).float()
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


@torch.no_grad()
def torch_scores(
    model,
    image_graph: ClipImageGraph,
    arch: str,
    category: str,
    pixels: np.ndarray,
    frame_hw: tuple[int, int],
    scale: float | None = None,
    sigma_at_518: float = 4.0,
    map_weight: float = 0.5,
) -> tuple[float, np.ndarray]:
    """(image score, (H, W) map) for one preprocessed frame `pixels` (1, 3, S, S), at temperature `scale`
    (None: the checkpoint's own, as the runtime reads it from the manifest)."""
    tokenizer, text = open_clip.get_tokenizer(arch), ClipTextGraph(model).eval()
    scale = float(model.logit_scale.exp()) if scale is None else scale

    def cls(states):
        emb = F.normalize(text(tokenizer(ensemble(states, category))), dim=-1)
        return F.normalize(emb.mean(0), dim=-1)

    classes = torch.stack([cls(NORMAL_STATES), cls(ABNORMAL_STATES)])  # (2, D)
    global_emb, *taps = image_graph(torch.from_numpy(pixels))
    probs = [torch.softmax(scale * t[0] @ classes.T, dim=-1)[:, 1] for t in taps]  # (N,) each
    size = pixels.shape[-1]
    grid = int(round(math.sqrt(probs[0].numel())))
    grid_map = torch.stack(probs).mean(0).view(1, 1, grid, grid)
    up = F.interpolate(grid_map, size=(size, size), mode="bilinear", align_corners=False)
    smooth = gaussian_blur(up, sigma_at_518 * size / 518)
    frame = F.interpolate(smooth, size=frame_hw, mode="bilinear", align_corners=False)[0, 0]
    global_p = torch.softmax(scale * global_emb[0] @ classes.T, dim=-1)[1]
    score = (1 - map_weight) * float(global_p) + map_weight * float(smooth.max())
    return score, frame.numpy()
