"""Image and prompt preparation for the bundle's graphs: pure numpy/OpenCV.

Every size, colour order, scale and padding rule comes from the component's
`preprocessing` block in the manifest; nothing is guessed from pixel values.
Normalisation (mean/std) happens inside the graphs, so these functions only
resize, pad and lay out pixels on the 0..255 scale.
"""

from __future__ import annotations

import cv2
import numpy as np

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def check_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept only HxWx3 uint8; conversions from other formats belong to the caller."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}; "
            "convert grayscale/alpha/16-bit images to 8-bit RGB first"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    return image


def to_nchw(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> (1, 3, H, W) float32 on the 0..255 scale."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def clip_input(image: np.ndarray, prep: dict) -> np.ndarray:
    """HxWx3 uint8 RGB -> (1, 3, S, S) float32 0..255, stretched to the bundle's size.

    Stretching (not cropping) keeps every pixel of the part in view, so the
    anomaly map can be resized straight back onto the frame.
    """
    check_rgb_uint8(image)
    height, width = prep["size"]
    resized = cv2.resize(image, (width, height), interpolation=INTERPOLATION[prep["interpolation"]])
    return to_nchw(resized)


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """Size after scaling the longest side to `target`, rounding half up."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_input(image: np.ndarray, prep: dict) -> np.ndarray:
    """HxWx3 uint8 RGB -> (1, 3, T, T) float32: longest side to T, padded bottom/right.

    The padding value is the graph's normalisation mean, so padded pixels become
    exactly zero after the in-graph normalisation, as SAM was trained.
    """
    check_rgb_uint8(image)
    target = prep["target_length"]
    new_h, new_w = longest_side_shape(image.shape[0], image.shape[1], target)
    resized = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATION[prep["interpolation"]])
    canvas = np.empty((target, target, 3), dtype=np.float32)
    canvas[:] = np.asarray(prep["pad_value"], dtype=np.float32)
    canvas[:new_h, :new_w] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])


def sam_coords(coords_xy: np.ndarray, orig_hw: tuple[int, int], target: int) -> np.ndarray:
    """(..., 2) x,y in original pixels -> the encoder frame (longest side = target)."""
    new_h, new_w = longest_side_shape(orig_hw[0], orig_hw[1], target)
    scale = np.array([new_w / orig_hw[1], new_h / orig_hw[0]], dtype=np.float32)
    return np.asarray(coords_xy, dtype=np.float32) * scale


def sam_prompts(
    orig_hw: tuple[int, int],
    prep: dict,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Points (N, 2) x,y with labels (N,) 1/0, and/or a box x0,y0,x1,y1 -> decoder feeds.

    The box becomes two corner points labelled 2 and 3. Without a box a padding
    point (label -1) is appended, as SAM's prompt encoder does, so the decoder
    graph sees exactly what the eager model saw. No mask prompt is passed.
    """
    pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    lab = np.zeros((0,), np.float32) if labels is None else np.asarray(labels, np.float32).reshape(-1)
    if len(pts) != len(lab):
        raise ValueError(f"{len(pts)} points but {len(lab)} labels")
    if box is not None:
        pts = np.concatenate([pts, np.asarray(box, np.float32).reshape(2, 2)])
        lab = np.concatenate([lab, np.array([2, 3], np.float32)])
    else:
        pts = np.concatenate([pts, np.zeros((1, 2), np.float32)])
        lab = np.concatenate([lab, np.array([-1], np.float32)])
    coords = sam_coords(pts, orig_hw, prep["target_length"])
    coords[lab == -1] = 0.0
    low = prep["mask_input_size"]
    return {
        "point_coords": coords[None].astype(np.float32),
        "point_labels": lab[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, low, low), np.float32),
        "has_mask_input": np.zeros((1,), np.float32),
        "orig_im_size": np.array(orig_hw, dtype=np.float32),
    }
