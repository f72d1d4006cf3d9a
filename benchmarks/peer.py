"""The peer a user would run instead: anomalib's WinCLIP, timed on the same machine.

WinCLIP's model fetches its pretrained CLIP (ViT-B-16-plus-240, laion400m_e31)
while it is built; where no model hub is reachable it is built with random
weights instead (same architecture and resolution, which is all a speed
comparison needs) by handing open_clip's factory `pretrained=None` for that one
call. anomalib is an optional extra: `pip install 'lineside[peer]'`.
"""

from __future__ import annotations

import time

import numpy as np


def winclip_ms(repeats: int = 3, size: int = 240, pretrained_ok: bool = False) -> dict | None:
    """Zero-shot WinCLIP forward time per image in ms (None when anomalib is not installed)."""
    try:
        import torch
        from anomalib.models.image.winclip import torch_model
    except ImportError:
        return None
    factory = torch_model.open_clip.create_model_and_transforms
    random_init = not pretrained_ok

    def build(name, pretrained=None, **kwargs):
        return factory(name, pretrained=None if random_init else pretrained, **kwargs)

    torch_model.open_clip.create_model_and_transforms = build
    try:
        model = torch_model.WinClipModel()
    finally:
        torch_model.open_clip.create_model_and_transforms = factory
    model.setup(class_name="part")
    model.eval()
    x = torch.rand(1, 3, size, size)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "model": "anomalib WinClipModel (zero-shot)",
        "backbone": torch_model.BACKBONE,
        "size": size,
        "random_weights": random_init,
        "ms_p50": float(np.median(times)),
        "n": repeats,
    }
