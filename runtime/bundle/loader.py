"""Open a bundle, prove it is the one export wrote, and hand out its sessions.

Every file is checked against its sha256 and every session's inputs and outputs
against the manifest before anything runs, so a half-copied or hand-edited bundle
fails at load with a message instead of producing wrong scores on the line.

    python -m runtime.check DIR      # verify, load every graph, run each once

Every file must lie inside the bundle folder once symlinks are resolved: a
bundle is copied between machines as a folder, and one that reaches outside it
would read whatever happens to be at that path on the line's box.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ..providers import triton_endpoint
from .fields import describe
from .manifest import REBUILD_HINT as REBUILD
from .manifest import BundleError, Component, FileEntry, Manifest, TensorSpec
from .preprocess import INTERPOLATION
from .sessions import OnnxSession, ProviderError

log = logging.getLogger("lineside.bundle")

ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
BRANCHES = ("language", "reference")  # an image encoder's config.branches: the detector branches it serves
INTERPOLATIONS = tuple(INTERPOLATION)  # preprocessing.interpolation: what preprocess.py resizes with
MAX_SIDE = 4096  # pixels: the largest graph input side a manifest may ask frames to be resized or padded to


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """A verified bundle folder. Use `Bundle.open(path)`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path | str, verify_hashes: bool = True) -> Bundle:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"bundle folder {path} does not exist; build one with python -m export")
        bundle = cls(path, Manifest.read(path))
        for component in bundle.manifest.components.values():
            for entry in component.all_files():
                bundle._check_file(component.name, entry, verify_hashes)
            if component.role == "image_encoder":
                _check_image_config(path, component)
            if component.role == "text_encoder":
                _check_text_config(path, component)
            if component.role in ("sam_encoder", "sam_decoder"):
                _check_sam_preprocessing(path, component, bundle.manifest.by_role("sam_encoder"))
        return bundle

    def by_role(self, role: str) -> Component | None:
        """The component with this role ("image_encoder", "text_encoder", "sam_encoder", "sam_decoder",
        "language_model"), as its manifest states it; None when the bundle has none."""
        return self.manifest.by_role(role)

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def component(self, name: str) -> Component:
        try:
            return self.manifest.components[name]
        except KeyError:
            have = ", ".join(sorted(self.manifest.components)) or "none"
            raise BundleError(f"{self.path} has no component {name!r} (it has: {have}); {REBUILD}") from None

    def precision_for(self, name: str, wanted: str) -> str:
        """`wanted` if this component has that variant, else fp32 (which every graph has)."""
        return wanted if wanted in self.component(name).files else "fp32"

    def file_path(self, entry: FileEntry, owner: str = "bundle") -> Path:
        """Where `entry` lies; refused when it resolves outside the bundle folder (a symlink out)."""
        path = self.path / entry.path
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise BundleError(f"{self.path}: {owner} file {entry.path} cannot be resolved ({e}); {REBUILD}") from e
        if not resolved.is_relative_to(self.path.resolve()):
            raise BundleError(
                f"{self.path}: {owner} file {entry.path} resolves to {resolved}, outside the bundle folder; "
                "copy the file into the bundle (a bundle is moved as one folder)"
            )
        return path

    def session(
        self,
        name: str,
        precision: str = "fp32",
        providers: Sequence[str] = ("cpu",),
        **session_options,
    ):
        """Load one graph and check its inputs and outputs against the manifest: an `OnnxSession`, or a
        `TritonSession` when the providers name a Triton server (which is checked against the manifest)."""
        component = self.component(name)
        if precision not in component.files:
            have = ", ".join(component.files)
            raise BundleError(
                f"{name} has no {precision} graph in {self.path} (it has: {have}); "
                f"export it with --precisions {precision}"
            )
        if (endpoint := triton_endpoint(providers)) is not None:
            from .triton_session import TritonSession  # tritonclient: the triton extra, only when asked for

            return TritonSession(endpoint, self.bundle_id, component, precision)
        if "tensorrt" in providers:
            session_options.setdefault("trt_profile", component.tensorrt_profile)
        path = self.file_path(component.files[precision])
        try:
            session = OnnxSession(path, providers, **session_options)
        except (ValueError, ProviderError):
            raise  # an unknown or unobtainable provider: the caller's settings, not the bundle
        except Exception as e:  # onnxruntime's load errors share no useful base class
            if isinstance(e.__cause__, ImportError):
                raise  # onnxruntime itself is missing; the message says what to install
            raise BundleError(f"{path}: onnxruntime cannot load this graph ({one_line(e)}); {REBUILD}") from e
        _check_io(f"{name} ({precision})", "input", component.inputs, session.session.get_inputs())
        _check_io(f"{name} ({precision})", "output", component.outputs, session.session.get_outputs())
        return session

    def _check_file(self, component: str, entry: FileEntry, verify_hashes: bool) -> None:
        path = self.file_path(entry, component)
        if not path.is_file():
            raise BundleError(f"{self.path}: {component} file {entry.path} is missing; {REBUILD}")
        try:
            self._check_content(path, entry, verify_hashes)
        except OSError as e:
            raise BundleError(f"{path}: unreadable ({e.strerror or e}); {REBUILD}") from e

    def _check_content(self, path: Path, entry: FileEntry, verify_hashes: bool) -> None:
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated copy?); {REBUILD}")
        if verify_hashes and (found := file_sha256(path)) != entry.sha256:
            raise BundleError(
                f"{path}: sha256 {found[:12]}… does not match the manifest's {entry.sha256[:12]}… "
                f"(the file was changed after export); {REBUILD}"
            )


def _check_io(what: str, role: str, expected: Sequence[TensorSpec], actual) -> None:
    """Compare the manifest's tensor list with what the session reports."""
    want = [t.name for t in expected]
    got = [a.name for a in actual]
    if want != got:
        raise BundleError(f"{what}: graph {role}s are {got}, the manifest says {want}; {REBUILD}")
    for spec, node in zip(expected, actual):
        dtype = ORT_DTYPES.get(node.type, node.type)
        if dtype != spec.dtype:
            raise BundleError(f"{what}: {role} {spec.name} is {dtype}, the manifest says {spec.dtype}; {REBUILD}")
        # A dimension that either side leaves symbolic is not compared.
        static_ok = len(node.shape) == len(spec.shape) and all(
            isinstance(m, str) or not isinstance(g, int) or m == g for m, g in zip(spec.shape, node.shape)
        )
        if not static_ok:
            raise BundleError(
                f"{what}: {role} {spec.name} has shape {list(node.shape)}, "
                f"the manifest says {list(spec.shape)}; {REBUILD}"
            )


def _check_image_config(folder: Path, component: Component) -> None:
    """The image graph's grid, taps, branches and input size, as the detector will read them.

    A wrong grid or a tap naming no output would let the bundle load and then
    turn every frame into ERROR on the line; refusing it here names the field.
    """
    at = f"{folder}: components.{component.name}"
    cfg, outputs = component.config, {t.name: t for t in component.outputs}
    grid = cfg.get("grid")
    if not _ints(grid, 2):
        raise BundleError(f"{at}.config.grid must be [rows, cols] of positive ints, not {describe(grid)}; {REBUILD}")
    taps = cfg.get("taps")
    if not isinstance(taps, list) or not taps:
        raise BundleError(
            f"{at}.config.taps must be a non-empty list of {{layer, output}}, not {describe(taps)}; {REBUILD}"
        )
    for i, tap in enumerate(taps):
        name = tap.get("output") if isinstance(tap, dict) else None
        if not isinstance(name, str) or name not in outputs:
            raise BundleError(
                f"{at}.config.taps[{i}] names output {describe(name)}, which is not among the graph's "
                f"outputs ({', '.join(outputs)}); {REBUILD}"
            )
        shape = outputs[name].shape  # (batch, grid rows * cols, D)
        if len(shape) != 3 or (isinstance(shape[1], int) and shape[1] != grid[0] * grid[1]):
            raise BundleError(
                f"{at}.config.grid {grid} does not fit output {name} of shape {list(shape)} "
                f"(batch, rows * cols, dim); {REBUILD}"
            )
    _check_branches(at, cfg)
    _check_interpolation(at, component.preprocessing)
    size = component.preprocessing.get("size")
    if not _ints(size, 2) or max(size) > MAX_SIDE:
        raise BundleError(
            f"{at}.preprocessing.size must be [height, width] of positive ints up to {MAX_SIDE}, "
            f"not {describe(size)}; {REBUILD}"
        )
    pixels = component.inputs[0].shape if component.inputs else ()
    if len(pixels) == 4 and all(isinstance(d, int) for d in pixels[2:]) and list(pixels[2:]) != size:
        raise BundleError(
            f"{at}.preprocessing.size {size} differs from input {component.inputs[0].name} "
            f"of shape {list(pixels)}; {REBUILD}"
        )


def _check_branches(at: str, cfg: dict) -> None:
    """`branches`: which detector branches the embeddings serve; "language" (CLIP's joint space, scored
    against text) needs the checkpoint's `logit_scale`, the temperature the detector scores with."""
    branches = cfg.get("branches")
    if (
        not isinstance(branches, list)
        or not branches
        or not all(isinstance(b, str) for b in branches)
        or not set(branches) <= set(BRANCHES)
    ):
        raise BundleError(
            f"{at}.config.branches must be a non-empty list of {' and/or '.join(BRANCHES)}, "
            f"not {describe(branches)}; {REBUILD}"
        )
    scale = cfg.get("logit_scale")
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
    if "language" in branches and not (number and scale > 0):
        raise BundleError(
            f"{at}.config.logit_scale must be a positive number for the language branch, "
            f"not {describe(scale)}; {REBUILD}"
        )


def _check_interpolation(at: str, prep: dict) -> None:
    """An interpolation the runtime cannot resize with would fail every frame, not the load."""
    if (how := prep.get("interpolation")) not in INTERPOLATIONS:
        raise BundleError(
            f"{at}.preprocessing.interpolation {describe(how)} is unknown; one of {', '.join(INTERPOLATIONS)}; {REBUILD}"
        )


def _check_sam_preprocessing(folder: Path, component: Component, encoder: Component | None) -> None:
    """SAM's frame size and prompt frame, as sam.py reads them on the first suspicious frame.

    SAM runs only on suspicious frames, so a bad size here would pass a quiet start
    and then turn every NG into ERROR (or ask for a canvas of terabytes); the
    decoder maps prompts into the encoder's frame, so both must name the same size.
    """
    at, prep = f"{folder}: components.{component.name}.preprocessing", component.preprocessing
    target = prep.get("target_length")
    if not _ints([target], 1) or target > MAX_SIDE:
        raise BundleError(
            f"{at}.target_length must be a positive int up to {MAX_SIDE} (pixels of SAM's input side), "
            f"not {describe(target)}; {REBUILD}"
        )
    inputs = {t.name: t.shape for t in component.inputs}
    if component.role == "sam_encoder":
        _check_interpolation(f"{folder}: components.{component.name}", prep)
        pixels = component.inputs[0].shape if component.inputs else ()
        if len(pixels) == 4 and any(isinstance(d, int) and d != target for d in pixels[2:]):
            raise BundleError(
                f"{at}.target_length {target} differs from input {component.inputs[0].name} "
                f"of shape {list(pixels)}; {REBUILD}"
            )
        pad = prep.get("pad_value")
        if not (isinstance(pad, list) and len(pad) == 3 and all(_finite(v) for v in pad)):
            raise BundleError(f"{at}.pad_value must be 3 numbers (R, G, B), not {describe(pad)}; {REBUILD}")
        return
    if encoder is not None:
        _check_sam_preprocessing(folder, encoder, encoder)  # its own fault named first, not as a mismatch
    theirs = encoder.preprocessing.get("target_length") if encoder is not None else target
    if target != theirs:
        raise BundleError(
            f"{at}.target_length {target} differs from components.{encoder.name}.preprocessing.target_length "
            f"{describe(theirs)} (prompts are mapped into the encoder's frame); {REBUILD}"
        )
    low = prep.get("mask_input_size")
    shape = inputs.get("mask_input", ())
    if not _ints([low], 1) or low > MAX_SIDE or any(isinstance(d, int) and d != low for d in shape[2:]):
        raise BundleError(
            f"{at}.mask_input_size must be a positive int up to {MAX_SIDE} that fits input mask_input "
            f"{list(shape)}, not {describe(low)}; {REBUILD}"
        )


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_text_config(folder: Path, component: Component) -> None:
    """The tokenizer the text encoder builds from the manifest: its vocabulary and sizes."""
    at = f"{folder}: components.{component.name}"
    if "tokenizer" not in component.assets:
        raise BundleError(f"{at}.assets.tokenizer is missing (the BPE vocabulary); {REBUILD}")
    tokenizer = component.config.get("tokenizer")
    if not isinstance(tokenizer, dict):
        raise BundleError(f"{at}.config.tokenizer must be an object, not {describe(tokenizer)}; {REBUILD}")
    if tokenizer.get("kind") != "clip_bpe":
        raise BundleError(
            f"{at}.config.tokenizer.kind {describe(tokenizer.get('kind'))} is unknown; this runtime "
            f"has CLIP's BPE only (clip_bpe); {REBUILD}"
        )
    for key in ("context_length", "num_merges", "sot", "eot"):
        if not _ints([tokenizer.get(key)], 1):
            raise BundleError(
                f"{at}.config.tokenizer.{key} must be a positive int, not {describe(tokenizer.get(key))}; {REBUILD}"
            )


def _ints(value, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def one_line(error: BaseException) -> str:
    """An exception as one line: onnxruntime's messages span several."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
