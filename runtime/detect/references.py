"""The few-shot branch's memory of known-good images, and a frame scored against it.

    memory = detector.remember(good_images, colour="BGR")    # encoded once
    result = detector.detect(frame, "screw", references=memory)

A memory is keyed by the content of its images (never by the identity of a
list), and names the encoder that built it: it is only valid with that graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .scoring import MIN_SCALE, calibrated, normal_spread, reference_grid


def content_key(images: list[np.ndarray]) -> str:
    """A hash of the images' shapes and pixels: equal images give equal keys, whatever list holds them."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class ReferenceMemory:
    """What the few-shot branch keeps of its normal references."""

    key: str  # content hash of the reference images (RGB uint8)
    encoder: str  # identity of the image encoder that built it (ImageEncoder.identity)
    count: int  # reference images
    globals: np.ndarray  # (R, D)
    taps: tuple[np.ndarray, ...]  # per tap (R * N, D)
    spread: float  # normal patch-distance spread (scoring.normal_spread)
    global_spread: float  # largest leave-one-out global distance among references

    @classmethod
    def build(cls, encoder, images: list[np.ndarray]) -> ReferenceMemory:
        """HxWx3 uint8 RGB images (any sizes: resized like any frame) through `encoder` (an ImageEncoder)."""
        if not images:
            raise ValueError("a reference memory needs at least one known-good image")
        encoded = [encoder.encode(image) for image in images]
        globals_ = np.stack([g for g, _ in encoded])  # (R, D)
        taps = tuple(np.concatenate([t[i] for _, t in encoded]) for i in range(len(encoded[0][1])))  # (R * N, D)
        if len(images) > 1:
            sims = globals_ @ globals_.T
            np.fill_diagonal(sims, -1.0)
            global_spread = max(float(((1.0 - sims.max(axis=1)) / 2.0).max()), MIN_SCALE)
        else:
            global_spread = MIN_SCALE
        spread = normal_spread([t for _, t in encoded])
        return cls(content_key(images), encoder.identity, len(images), globals_, taps, spread, global_spread)

    def score(self, global_emb: np.ndarray, taps: list[np.ndarray], grid: tuple[int, int]) -> tuple[np.ndarray, float]:
        """A frame's (D,) embedding and [(N, D)] tap tokens -> (rows, cols) reference map and global probability."""
        ref_grid = reference_grid(taps, list(self.taps), grid, self.spread)
        global_p = float(calibrated((1.0 - (self.globals @ global_emb).max()) / 2.0, self.global_spread))
        return ref_grid, global_p


def memory_for(refs, encoder, last: ReferenceMemory | None = None) -> ReferenceMemory | None:
    """What a frame is scored against: `refs` a ReferenceMemory (refused unless `encoder` built it),
    HxWx3 uint8 RGB images (`last` again when their content is the same, else a new memory), or None."""
    if isinstance(refs, ReferenceMemory):
        if refs.encoder != encoder.identity:
            raise ValueError(
                f"these references were encoded by {refs.encoder}, not by this detector's "
                f"{encoder.identity}: remember them with this detector"
            )
        return refs
    if not refs:
        return None
    if last is not None and last.key == content_key(refs):
        return last
    return ReferenceMemory.build(encoder, refs)
