"""The image side of the detector: one graph, frames in, embeddings out.

    encoder = ImageEncoder.from_bundle(bundle, settings)
    global_emb, taps = encoder.encode(rgb)   # (D,), [(N, D) per tap]

The text side is `TextEncoder` (text_encoder.py) behind `PromptText`
(prompt_text.py). Anything with this class's attributes and `encode` can stand
in for it (benchmarks/parity.py runs the torch module the graph came from).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..bundle.binding import bound
from ..bundle.loader import Bundle
from ..bundle.manifest import BundleError, Component
from ..bundle.precision import open_graph
from ..bundle.preprocess import clip_input
from ..settings import DetectorSettings

# The settings a part's sessions are built with: changing one needs new sessions
# (Detector.with_settings refuses it; build a new detector with Detector.from_bundle).
SESSION_SETTINGS = (
    "precision",
    "allow_unverified_precision",
    "precision_cache_dir",
    "providers",
    "threads",
    "strict_providers",
    "trt_cache_dir",
    "trt_fp16",
    "io_binding",
    "cuda_graph",
    "text_cache_dir",
)


class NonFiniteError(RuntimeError):
    """A stage produced NaN or inf: the frame cannot be judged, so it is an ERROR, never OK."""


def require_finite(stage: str, *arrays) -> None:
    """Raise NonFiniteError naming `stage` when any value is NaN or inf."""
    for array in arrays:
        values = np.asarray(array)
        if not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise NonFiniteError(f"{stage} produced {bad} non-finite value(s) of {values.size} (NaN or inf)")


def session_options(settings: DetectorSettings) -> dict:
    """The keyword arguments of `Bundle.session` that come from the settings (besides precision, providers)."""
    return {
        "threads": settings.threads,
        "trt_cache_dir": settings.trt_cache_dir,
        "trt_fp16": settings.trt_fp16,
        "cuda_graph": settings.cuda_graph,
        "strict_providers": settings.strict_providers,
    }


def open_session(bundle: Bundle, name: str, settings: DetectorSettings):
    """(precision, session) of graph `name` at the settings' precision, refused when outside its
    parity bound (runtime/bundle/precision.py) unless allow_unverified_precision; "auto" picks."""
    return open_graph(
        bundle,
        name,
        settings.precision,
        settings.providers,
        settings.allow_unverified_precision,
        settings.precision_cache_dir,
        **session_options(settings),
    )


def graph_entry(precision: str, session, providers=None) -> dict:
    """One graph's row of `Detector.graphs()`: its precision, the providers it runs on now (after any
    fallback) and those the settings asked for."""
    running = providers if providers is not None else getattr(session, "providers", ())
    entry = {"precision": precision, "providers": list(running), "requested": list(getattr(session, "requested", ()))}
    if hasattr(session, "server_state"):  # a graph on a Triton server: whether it answers now
        entry["server"] = session.server_state()
    return entry


def with_encoder_defaults(settings: DetectorSettings, encoder: ImageEncoder) -> DetectorSettings:
    """`settings` with what they leave unset taken from the encoder's manifest entry: logit_scale None is
    the checkpoint's own, recorded at export, so that a result's settings show the value it was scored with."""
    if settings.logit_scale is None and encoder.logit_scale is not None:
        return dataclasses.replace(settings, logit_scale=encoder.logit_scale)
    return settings


def image_component(bundle: Bundle) -> Component:
    """The bundle's image encoder (role image_encoder): CLIP's image tower or the patch encoder."""
    component = bundle.by_role("image_encoder")
    if component is None:
        raise BundleError(
            f"{bundle.path} has no image encoder (role image_encoder), so it cannot "
            "score a frame; export one into it: python -m export clip|all ..."
        )
    return component


class ImageEncoder:
    """HxWx3 uint8 RGB -> global embedding (D,) and patch tokens per tap [(N, D)], N = rows * cols of `grid`.

    `session` is anything with `run(feeds) -> {output name: array}` and `providers`
    (an `OnnxSession`); `component` the manifest entry it was loaded from, which
    gives the preprocessing, the grid and the output names.
    """

    def __init__(self, session, component: Component, precision: str = "fp32"):
        self.session, self.component, self.precision = session, component, precision
        self.preprocessing = component.preprocessing
        self.size: tuple[int, int] = tuple(component.preprocessing["size"])  # model input (h, w)
        self.grid: tuple[int, int] = tuple(component.config["grid"])  # patch rows, cols
        self.input_name = component.inputs[0].name
        self.global_output = component.outputs[0].name
        self.tap_outputs = [t["output"] for t in component.config["taps"]]
        # Whether its embeddings live in CLIP's joint space (so text prompts can score them), and the
        # temperature of that scoring: the checkpoint's own, recorded at export (None without language).
        self.clip: bool = "language" in component.config["branches"]
        self.logit_scale: float | None = float(component.config["logit_scale"]) if self.clip else None

    @classmethod
    def from_bundle(cls, bundle: Bundle, settings: DetectorSettings) -> ImageEncoder:
        component = image_component(bundle)
        precision, session = open_session(bundle, component.name, settings)
        return cls(bound(session, component, settings.io_binding), component, precision)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self.session.providers)

    def graphs(self) -> dict[str, dict]:
        """{graph: {precision, providers, requested}}: what this part runs, on what, now."""
        return {self.component.name: graph_entry(self.precision, self.session, self.providers)}

    @property
    def identity(self) -> str:
        """Which graph made an embedding: a reference memory is only valid with the encoder that built it."""
        entry = self.component.files.get(self.precision)
        return f"{self.component.name} {self.precision} {entry.sha256[:16] if entry else '-'}"

    def encode(self, rgb: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """HxWx3 uint8 RGB (any size: resized by the manifest's preprocessing) -> (D,), [(N, D)]."""
        global_emb, taps = self.run(clip_input(rgb, self.preprocessing))
        require_finite("the image encoder", global_emb, *taps)
        return global_emb, taps

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(1, 3, h, w) float32 model input -> the graph's global output (D,) and tap outputs [(N, D)]."""
        out = self.session.run({self.input_name: pixels})
        return out[self.global_output][0], [out[name][0] for name in self.tap_outputs]
