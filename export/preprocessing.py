"""The manifest's `preprocessing` block of an image graph that takes a stretched square of pixels.

CLIP's image tower and the patch encoder read their input the same way (runtime's
`preprocess.clip_input`): RGB on the 0..255 scale, stretched to size x size, NCHW
float32, mean and std applied inside the graph. Only the size, the interpolation
and the normalisation constants differ, so the block is written here once.
"""

from __future__ import annotations

from collections.abc import Sequence


def stretched_square(size: int, interpolation: str, mean: Sequence[float], std: Sequence[float]) -> dict:
    """`interpolation` one of runtime.bundle.preprocess.INTERPOLATION's names; mean and std per RGB channel, 0..255."""
    return {
        "layout": "NCHW",
        "colour": "RGB",
        "dtype": "float32",
        "range": [0, 255],
        "resize": "stretch",
        "size": [size, size],
        "interpolation": interpolation,
        "normalisation": {"where": "graph", "mean": list(mean), "std": list(std)},
    }
