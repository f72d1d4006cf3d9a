"""Fixed, seeded inputs for parity checks: the same bytes on every machine."""

from __future__ import annotations

import numpy as np

PARITY_PROMPTS = [
    "a photo of a flawless screw.",
    "a cropped photo of a damaged metal nut with a scratch on its thread",
    "Café crème — naïve façade, Ünïcödé & “quotes” &amp; entities",
    "螺丝上有划痕",  # non-Latin script
    "a bottle with a crack 🍾 and 3 dents, 42mm long",
    "   lots   of\twhitespace\n and CAPITALS  ",
    " ".join(["a very long prompt about a transistor with a bent lead"] * 12),  # > 77 tokens
    "",
]


def parity_image(height: int, width: int, seed: int) -> np.ndarray:
    """HxWx3 uint8 RGB: smooth gradients, a bright square and mild noise.

    Structure matters: on pure noise every patch looks alike and parity figures
    say little about the attention paths.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200.0
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    base[top : top + height // 4, left : left + width // 4] = 240.0
    noise = rng.normal(0.0, 8.0, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def calibration_images() -> list[np.ndarray]:
    """Real photographs and textures from scikit-image (HxWx3 uint8 RGB) for int8 calibration.

    Never the evaluation data: calibrating on the test set would flatter the
    quantised model's accuracy.
    """
    from skimage import color, data

    images = []
    for name in ("brick", "grass", "gravel", "camera", "coffee", "chelsea", "rocket", "astronaut", "text", "moon"):
        image = getattr(data, name)()
        images.append(image if image.ndim == 3 else (color.gray2rgb(image)).astype(np.uint8))
    return images
