"""SAM as the region refiner: one encoder pass per suspicious frame, one decoder
pass per candidate, prompted with the candidate's box and its peak point."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle.binding import BoundSession, bound
from ..bundle.loader import Bundle
from ..bundle.manifest import REBUILD_HINT, BundleError
from ..bundle.precision import open_graph
from ..bundle.preprocess import sam_input, sam_prompts
from ..settings import DetectorSettings
from .encoders import graph_entry, session_options
from .regions import Candidate


@dataclass(frozen=True)
class SamMask:
    mask: np.ndarray  # (h, w) bool in work-map pixels
    iou: float  # SAM's own predicted IoU


def has_sam(bundle: Bundle) -> bool:
    """Whether the bundle has both SAM parts (roles sam_encoder and sam_decoder)."""
    return bundle.by_role("sam_encoder") is not None and bundle.by_role("sam_decoder") is not None


class SamRefiner:
    """Masks for candidate regions; the caller filters them by IoU, area and anomaly mass."""

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "fp32",
        providers=("cpu",),
        allow_unverified: bool = False,
        cache: Path | None = None,
        io_binding: bool | None = None,
        **session_options,
    ):
        """Both graphs at `precision` (or "auto"), each refused when outside its parity bound unless
        `allow_unverified` (runtime/bundle/precision.py); `precisions` says what each runs. With IO
        binding (`io_binding`, binding.py) the image embeddings stay on the device between the two."""
        if not has_sam(bundle):
            raise BundleError(f"{bundle.path} has no SAM (roles sam_encoder and sam_decoder); {REBUILD_HINT}")
        self.encoder_c, self.decoder_c = bundle.by_role("sam_encoder"), bundle.by_role("sam_decoder")
        (encoder_p, self.encoder), (decoder_p, self.decoder) = (
            open_graph(bundle, c.name, precision, providers, allow_unverified, cache, **session_options)
            for c in (self.encoder_c, self.decoder_c)
        )
        self.precisions = {self.encoder_c.name: encoder_p, self.decoder_c.name: decoder_p}
        self.encoder = bound(self.encoder, self.encoder_c, io_binding)
        self.decoder = bound(self.decoder, self.decoder_c, io_binding)
        self.multi = list(self.decoder_c.config["mask_slots"]["multi"])
        self.threshold = float(self.decoder_c.config["mask_threshold"])

    @classmethod
    def from_bundle(cls, bundle: Bundle, settings: DetectorSettings) -> SamRefiner | None:
        """The bundle's SAM at the settings' precision and providers; None when the bundle has no SAM."""
        if not has_sam(bundle):
            return None
        return cls(
            bundle,
            settings.precision,
            settings.providers,
            settings.allow_unverified_precision,
            settings.precision_cache_dir,
            settings.io_binding,
            **session_options(settings),
        )

    def graphs(self) -> dict[str, dict]:
        """{graph: {precision, providers, requested}} of both SAM graphs."""
        parts = ((self.encoder_c, self.encoder), (self.decoder_c, self.decoder))
        return {c.name: graph_entry(self.precisions[c.name], session) for c, session in parts}

    def embed(self, frame_rgb: np.ndarray):
        """The frame's image embeddings: numpy, or an OrtValue left on the device with IO binding."""
        feeds = {self.encoder_c.inputs[0].name: sam_input(frame_rgb, self.encoder_c.preprocessing)}
        name = self.encoder_c.outputs[0].name
        if isinstance(self.encoder, BoundSession):
            return self.encoder.run(feeds, to_host=(), keep=(name,))[name]
        return self.encoder.run(feeds)[name]

    def masks(self, embeddings, work_hw: tuple[int, int], found: list[Candidate]) -> list[SamMask]:
        """One mask per candidate: of SAM's multi-mask answers, the one it rates best."""
        out = []
        names = [t.name for t in self.decoder_c.outputs][:2]  # masks, iou_predictions (low_res_masks unused)
        if not isinstance(embeddings, np.ndarray) and not isinstance(self.decoder, BoundSession):
            embeddings = embeddings.numpy()  # an unbound decoder takes host memory
        for candidate in found:
            feeds = sam_prompts(
                work_hw,
                self.decoder_c.preprocessing,
                np.array([candidate.peak]),
                np.array([1.0]),
                np.array(candidate.box, np.float32),
            )
            result = self.decoder.run({self.decoder_c.inputs[0].name: embeddings, **feeds}, names)
            masks, ious = result[names[0]][0], result[names[1]][0]  # (4, h, w), (4,)
            best = max(self.multi, key=lambda slot: ious[slot])
            out.append(SamMask(masks[best] > self.threshold, float(ious[best])))
        return out
