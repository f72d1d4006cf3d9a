"""Frames in any reasonable format -> HxWx3 uint8 RGB, explicitly and loudly.

Every input is treated as hostile. Files are read as bytes (never a path handed
to OpenCV, whose decoders choke on names that are not UTF-8), their header is
read to bound the decoded size before anything is decoded, and only regular
files are read (a FIFO would block for ever). Arrays are converted by a stated
rule (uint16: the declared bit depth scaled to 8 bits; float: 0..1 scaled to
255); anything outside that rule, too small or not finite is refused with a
message naming what was given. Scale is never guessed from pixel values.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..settings import MAX_IMAGE_PIXELS

COLOUR_ORDERS = ("BGR", "RGB")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MIN_FRAME_SIDE = 16  # pixels: below this there is no part to inspect
MAX_FILE_BYTES = 512 << 20
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)


class ImageError(ValueError):
    """An input that cannot become a frame; the message names the input and the fix."""


def describe(image) -> str:
    if image is None:
        return "None"
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    return type(image).__name__


def to_rgb_uint8(image: np.ndarray, colour: str = "BGR", bits: int = 16, min_side: int = MIN_FRAME_SIDE) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 in uint8, uint16, float (0..1) -> HxWx3 uint8 RGB.

    `colour` says how the caller's 3/4-channel data is ordered ("BGR" for
    OpenCV and most cameras, "RGB" for PIL and most files read by other
    libraries). Alpha is dropped, not composited. `bits` is the declared depth
    of uint16 data (10, 12, 14 or 16): values above 2**bits - 1 are refused, and
    16-bit data that never leaves the low 12 bits is refused as a likely 12-bit
    camera declared as 16-bit (it would be inspected as a near-black frame).
    Frames with a side under `min_side` pixels are refused.
    """
    if colour not in COLOUR_ORDERS:
        raise ImageError(f"colour must be one of {COLOUR_ORDERS}, got {colour!r}")
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected an image as a numpy array, got {describe(image)}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got {describe(image)}")
    if image.dtype not in SUPPORTED_DTYPES:
        raise ImageError(f"unsupported dtype {image.dtype}: use uint8, uint16 or float in 0..1")
    if min(image.shape[:2]) == 0:
        raise ImageError(f"empty image: {describe(image)}")
    if min(image.shape[:2]) < max(1, min_side):
        raise ImageError(f"frame too small to inspect: {describe(image)}; each side needs >= {min_side} pixels")
    image = _to_uint8(image, bits)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if colour == "BGR":  # OpenCV's swap: numpy's copy of a reversed view took ~100x as long (6-10 ms a VGA frame)
        return cv2.cvtColor(
            np.ascontiguousarray(image), cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        )
    return np.ascontiguousarray(image[:, :, :3])


def _to_uint8(image: np.ndarray, bits: int) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return _uint16_to_uint8(image, bits)
    if image.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(image).all():
            raise ImageError("float frame contains NaN or inf values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"float frame values span {low:.4g}..{high:.4g}; float frames must be scaled to 0..1 "
                "(or pass uint8/uint16 data)"
            )
        return (image * 255.0 + 0.5).astype(np.uint8)
    raise ImageError(f"unsupported dtype {image.dtype}: use uint8, uint16 or float in 0..1")


def _uint16_to_uint8(image: np.ndarray, bits: int) -> np.ndarray:
    if bits not in (10, 12, 14, 16):
        raise ImageError(f"input bit depth {bits} is not one of 10, 12, 14, 16")
    high = int(image.max())
    if high >= 1 << bits:
        raise ImageError(
            f"uint16 frame holds values up to {high}, above its declared {bits}-bit range "
            f"(max {(1 << bits) - 1}); set the input bit depth the camera really delivers"
        )
    if bits == 16 and 0 < high < 1 << 12:
        raise ImageError(
            f"uint16 frame never exceeds {high} (12 bits) while declared 16-bit: a 10/12-bit camera? "
            "set the input bit depth (input_bits) to what the camera delivers"
        )
    return (image >> (bits - 8)).astype(np.uint8)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; refuses anything but a regular file of a sane size (no FIFO, no device)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path!s} does not exist") from None
    except OSError as e:
        raise ImageError(f"image {path!s} cannot be read: {e}") from e
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path!s} is not a regular file (a FIFO, device or folder): skipped")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageError(f"{path!s} is {info.st_size} bytes, over the {MAX_FILE_BYTES} byte limit of one image")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ImageError(f"image {path!s} cannot be read: {e}") from e


def decode_image(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded bytes -> the array OpenCV decodes (IMREAD_UNCHANGED: BGR order, any depth).

    The header is read first (Pillow, without decoding pixels) so that a small
    file declaring a huge image is refused before it can take the box's memory.
    """
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name} is not a readable image (corrupt or unsupported format)") from e
    except Image.DecompressionBombError as e:  # Pillow's own bound (179 MP), above ours
        raise ImageError(f"{name} declares {_too_large(max_pixels)}") from e
    if width * height > max_pixels:
        raise ImageError(f"{name} declares {width}x{height} pixels, {_too_large(max_pixels)}")
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageError(f"{name} could not be decoded: {e}") from e
    if array is None or array.size == 0:
        raise ImageError(f"{name} is not a readable image (corrupt or unsupported format)")
    return array


def _too_large(max_pixels: int) -> str:
    return f"over the {max_pixels / 1e6:g} MP limit (max_image_pixels): refused before decoding"


def read_frame(path: Path | str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A file as OpenCV would decode it (BGR order, its own depth and channels), read safely."""
    path = Path(path)
    return decode_image(_read_bytes(path), printable(path), max_pixels)


def read_image(path: Path | str, max_pixels: int = MAX_IMAGE_PIXELS, bits: int = 16) -> np.ndarray:
    """Read a file as HxWx3 uint8 RGB (any depth and channel count OpenCV can read)."""
    return to_rgb_uint8(read_frame(path, max_pixels), "BGR", bits)


def write_image(path: Path | str, image: np.ndarray) -> None:
    """Encode by the path's suffix and write through Python (any bytes in the name), atomically."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"could not encode {printable(path)} ({describe(image)})")
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data.tobytes())
    os.replace(tmp, path)


def printable(name: str | Path) -> str:
    """A path for messages, logs and JSON, whatever bytes it holds: bytes that are not UTF-8
    as backslash escapes (b"\\xff" -> "\\\\xff"), never a lone surrogate."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
