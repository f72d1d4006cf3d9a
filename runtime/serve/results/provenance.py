"""The `audit` block of every OK, NG and ERROR line: what an auditor asks of a verdict besides the verdict.

The line already names the bundle (`bundle_id`), each graph's precision, the
threshold in force (`settings.threshold`), how it was set (`operating_point`) and
the references' content key (`reference_set.key`). The block adds what those do
not pin down: the sha256 of each graph file that ran (bundle_id is a short hash of
the whole manifest), each variant's parity verdict on this machine (as serve
measured it at start: a graph that runs fp16 or int8 either holds its bound here
or was allowed outside it), a calibration id that changes whenever the threshold
or the way it was set changes, the recipe when one is in force, and the sha256 of
the frame's pixels, so that a stored frame can be matched to its verdict.

The per-process part is made once at start (`Provenance.of`); only the image hash
is computed per frame (about 1 ms per megapixel).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from ...bundle.verify import Probe, verdict

log = logging.getLogger("lineside.serve")


class _Providers:
    """Stands in for a session where the verdict is read from the cache serve filled at start."""

    def __init__(self, providers):
        self.providers = list(providers)

    def run(self, feeds):  # a cache miss: the verdict is not measured again here
        raise LookupError("no verdict cached for this graph on this machine")


def _verdict(bundle, name: str, graph: dict, cache: Path | None, allowed: bool) -> dict:
    precision = graph["precision"]
    if precision == "fp32":
        return {"precision": precision, "verdict": "reference"}
    try:
        found = verdict(Probe(bundle, name, graph["providers"]), precision, _Providers(graph["providers"]), cache)
    except Exception as e:  # not measured: the audit says so rather than guess
        log.warning("audit: no parity verdict for %s %s on this machine (%s)", name, precision, e)
        return {"precision": precision, "verdict": "not measured here"}
    said = "holds its bound here" if found.holds else "outside its bound, allowed" if allowed else "outside its bound"
    return {"precision": precision, "verdict": said, "cosine_here": found.cosine()}


class Provenance:
    """What stays the same from frame to frame of one serve (models, verdicts), and the per-frame block."""

    def __init__(self, models: dict | None = None, precisions: dict | None = None, recipe: str | None = None):
        self.models = dict(models or {})  # graph -> sha256 of the file that runs
        self.precisions = dict(precisions or {})  # graph -> {precision, verdict, cosine_here}
        self.recipe = recipe

    @classmethod
    def of(cls, detector) -> Provenance:
        """From a detector built from a bundle; an empty one for stand-ins without a bundle."""
        bundle = getattr(detector, "bundle", None)
        if bundle is None:
            return cls()
        graphs, settings = detector.graphs(), detector.settings
        cache, allowed = settings.precision_cache_dir, settings.allow_unverified_precision
        models = {name: bundle.component(name).files[g["precision"]].sha256 for name, g in graphs.items()}
        precisions = {name: _verdict(bundle, name, g, cache, allowed) for name, g in graphs.items()}
        return cls(models, precisions)

    def block(self, image, record: dict) -> dict:
        """The audit block of `record` (an OK / NG / ERROR line's fields) for a frame of pixels `image`."""
        out = {"image_sha256": image_sha256(image), "models": self.models, "precisions": self.precisions}
        out["calibration_id"] = calibration_id(record)
        if self.recipe is not None:
            out["recipe"] = self.recipe
        return out


def image_sha256(image) -> str | None:
    """sha256 of the frame's pixels as decoded (HxWxC uint8, BGR, row by row); None when there were none."""
    if image is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(image)).hexdigest()


def calibration_id(record: dict) -> str:
    """16 hex over the threshold in force, how it was set and the references it was set with: lines with
    the same id were judged at the same calibration."""
    threshold = (record.get("settings") or {}).get("threshold")
    key = (record.get("reference_set") or {}).get("key")
    basis = {"threshold": threshold, "operating_point": record.get("operating_point"), "references": key}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode("utf-8")).hexdigest()[:16]
