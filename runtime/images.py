"""Frames in any reasonable format -> HxWx3 uint8 RGB, explicitly and loudly.

Cameras and files hand over grayscale, BGRA, 16-bit and float frames. Each is
converted by a stated rule (16-bit: the top 8 bits; float: 0..1 scaled to 255,
clipped); anything else is refused with a message naming what was given. Scale
is never guessed from pixel values.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

COLOUR_ORDERS = ("BGR", "RGB")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def describe(image) -> str:
    if image is None:
        return "None"
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    return type(image).__name__


def to_rgb_uint8(image: np.ndarray, colour: str = "BGR") -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 in uint8, uint16, float32/64 (0..1) -> HxWx3 uint8 RGB.

    `colour` says how the caller's 3/4-channel data is ordered ("BGR" for
    OpenCV and most cameras, "RGB" for PIL and most files read by other
    libraries). Alpha is dropped, not composited.
    """
    if colour not in COLOUR_ORDERS:
        raise ValueError(f"colour must be one of {COLOUR_ORDERS}, got {colour!r}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image as a numpy array, got {describe(image)}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got {describe(image)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image: {describe(image)}")
    image = _to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1] if colour == "BGR" else image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(image).all():
            raise ValueError("float image contains NaN or inf values")
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported dtype {image.dtype}: use uint8, uint16 or float in 0..1")


def read_image(path: Path | str) -> np.ndarray:
    """Read a file as HxWx3 uint8 RGB (any depth and channel count OpenCV can read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"{path} is not a readable image (corrupt or unsupported format)")
    return to_rgb_uint8(data, "BGR")


def list_images(inputs: list[Path | str]) -> list[Path]:
    """Files and folders (searched one level, sorted) -> image paths."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            found.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    return found
