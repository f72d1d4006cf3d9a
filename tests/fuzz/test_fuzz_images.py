"""Images as bytes (frames.decode_image) and as arrays (frames.to_rgb_uint8): HxWx3 uint8 RGB out, or an
ImageError saying what was wrong; never another exception, never a silently wrong shape."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.detect.frames import ImageError, decode_image, to_rgb_uint8
from tests.fuzz.invariants import clear_error

pytestmark = pytest.mark.fuzz

DTYPES = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int8, np.int32, np.bool_, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)


def _encoded(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@st.composite
def image_bytes(draw) -> bytes:
    """Real PNG/JPEG/BMP files, then cut, flipped or spliced; or any bytes at all."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    image = draw(hnp.arrays(np.uint8, (h, w, 3), elements=st.integers(0, 255)))
    data = bytearray(_encoded(image, draw(st.sampled_from([".png", ".jpg", ".bmp", ".tiff"]))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@given(image_bytes())
def test_bytes_decode_to_an_image_or_a_clear_error(data):
    try:
        array = decode_image(data, "fuzzed.bin", max_pixels=1 << 20)
    except ImageError as e:
        clear_error(e)
        return
    assert isinstance(array, np.ndarray) and array.size > 0
    try:
        rgb = to_rgb_uint8(array)
    except ImageError as e:
        clear_error(e)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[:2] == array.shape[:2]


@given(hnp.arrays(DTYPES, SHAPES), st.sampled_from(["BGR", "RGB", "bgr", ""]), st.sampled_from([8, 10, 12, 16, 0]))
def test_arrays_become_rgb_uint8_or_a_clear_error(image, colour, bits):
    try:
        rgb = to_rgb_uint8(image, colour=colour, bits=bits)
    except ImageError as e:
        clear_error(e)
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (*image.shape[:2], 3) and rgb.flags.c_contiguous
    assert image.dtype in (np.uint8, np.uint16) or np.issubdtype(image.dtype, np.floating)
    if np.issubdtype(image.dtype, np.floating):
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1  # else never "OK"


@given(st.one_of(st.none(), st.text(max_size=8), st.lists(st.integers(), max_size=4), st.integers()))
def test_what_is_no_array_is_refused(thing):
    with pytest.raises(ImageError) as e:
        to_rgb_uint8(thing)
    clear_error(e.value)
