"""Whether a precision variant holds: by its export figures, and on the machine that runs it.

An fp16 or int8 graph's agreement with fp32 belongs to the graph *and* the
machine (runtime/machine.py): the same int8 bytes that measure cosine 0.96 on
a CPU with VNNI measured 0.38 on one without. So each variant is run here on
the bundle's check frame (smoke.check_frame), beside the fp32 graph on the
same providers, and judged by the bound its manifest records. On one frame
the figures judged are the cosine and the mask IoU; the relative difference,
a maximum over one frame's values, is kept with the figures but judged at export only.

The figures measured here are kept on disk (`cache_dir`, by default
~/.cache/lineside/precision) under a key of bundle id, graph, precision, this
machine's fingerprint, onnxruntime's version and the providers that ran, so a
detector measures once per machine and then starts without measuring.
`python -m runtime.check` always measures afresh (and refreshes the cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..machine import describe, fingerprint, onnxruntime_version, summary
from .loader import Bundle
from .parity import compare, failures, worst
from .smoke import check_frame, graph_feeds

log = logging.getLogger("lineside.precision")

JUDGED_HERE = ("cosine", "mask_iou")
CHECK_RUNS = 3  # python -m runtime.check: the worst of a few runs


def cache_dir(folder: Path | None = None) -> Path:
    """`folder`, or ~/.cache/lineside/precision (beside the text cache; XDG_CACHE_HOME moves both)."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lineside" / "precision"


@dataclass(frozen=True)
class Verdict:
    """One graph at one precision: its export record and the figures measured on this machine.

    `here` is None for fp32, the reference every variant is measured against
    (an fp32 graph outside its bound never leaves export).
    """

    component: str
    precision: str
    export: dict  # the manifest's parity record of the file
    here: dict | None = None  # output -> figures against fp32 on this machine
    measured_on: dict | None = None  # runtime.machine.describe() of the run that measured `here`
    cached: bool = False  # `here` was read from the cache, not measured in this process

    @property
    def bound(self) -> dict:
        return self.export.get("bound") or {}

    @property
    def failures_here(self) -> list[str]:
        if self.here is None:
            return []
        if not self.bound:
            return ["the manifest records no bound for it"]
        return failures(self.here, self.bound, JUDGED_HERE)

    @property
    def holds_in_manifest(self) -> bool:
        return self.precision == "fp32" or self.export.get("within_bound") is True

    @property
    def holds_here(self) -> bool:
        return not self.failures_here

    @property
    def holds(self) -> bool:
        return self.holds_in_manifest and self.holds_here

    def cosine(self, where: str = "here") -> float | None:
        """The worst output cosine measured here, or at export (`where="export"`)."""
        figures = self.here if where == "here" else self.export.get("outputs")
        return min(f["cosine"] for f in figures.values()) if figures else None

    def why_not(self) -> str:
        """Which figures miss the bound, where, and the machines that measured them; "" when it holds."""
        if self.holds:
            return ""
        parts, here = [], _machine(self.measured_on)
        if not self.holds_here:
            parts.append(f"here {'; '.join(self.failures_here)}")
        if not self.holds_in_manifest:
            parts.append(f"at export {'; '.join(self.export.get('failures') or []) or 'no parity figures recorded'}")
        export = _machine(self.export.get("measured_on"))
        machines = [f"here: {here}"] if here else []
        machines.append("export: " + ("the same CPU and onnxruntime" if export == here else export or "not recorded"))
        return f"({', and '.join(parts)}; measured {'; '.join(machines)})"


def _machine(described: dict | None) -> str:
    """A measuring machine in words, without its core count and providers (which do not change figures)."""
    if not isinstance(described, dict):
        return ""
    return summary({k: v for k, v in described.items() if k not in ("cores", "providers")})


def reference_feeds(bundle: Bundle, name: str, providers: Sequence[str] = ("cpu",)) -> dict:
    """The graph's inputs on the check frame, as `python -m runtime.check` makes them; SAM's
    decoder, fed the encoder's embeddings, gets the fp32 encoder's output."""
    frame, cache = check_frame(), {}
    if bundle.component(name).role == "sam_decoder":
        encoder = bundle.by_role("sam_encoder")
        outputs = bundle.session(encoder.name, "fp32", providers).run(graph_feeds(bundle, encoder.name, frame, cache))
        cache["sam_encoder"] = list(outputs.values())
    return graph_feeds(bundle, name, frame, cache)


class Probe:
    """One graph's check-frame inputs and fp32 outputs, made once (and only when needed) for all
    its variants: `figures` of a variant's session against them, `time_ms` of any session."""

    def __init__(self, bundle: Bundle, name: str, providers: Sequence[str] = ("cpu",), fp32=None, **session_options):
        self.bundle, self.name, self.providers = bundle, name, tuple(providers)
        self.options, self.fp32 = session_options, fp32
        self._feeds: dict | None = None
        self._reference: dict | None = None
        self._warm: set[int] = set()  # sessions that have run once (arenas and kernels set up)

    @property
    def feeds(self) -> dict:
        if self._feeds is None:
            self._feeds = reference_feeds(self.bundle, self.name, self.providers)
        return self._feeds

    def run(self, session) -> dict:
        self._warm.add(id(session))
        return session.run(self.feeds)

    def reference(self) -> dict:
        if self._reference is None:
            fp32 = self.fp32 or self.bundle.session(self.name, "fp32", self.providers, **self.options)
            self._reference = self.run(fp32)
        return self._reference

    def figures(self, session, precision: str, runs: int = 1) -> dict:
        """Output -> figures of `session` against fp32, the worst of `runs` runs; IoU for the outputs
        whose export figures have one (mask logits)."""
        export = self.bundle.component(self.name).files[precision].parity.get("outputs") or {}
        masks = tuple(name for name, f in export.items() if isinstance(f, dict) and "mask_iou" in f)
        reference = self.reference()
        return worst([compare(reference, self.run(session), masks) for _ in range(runs)])

    def time_ms(self, session) -> float:
        """Milliseconds of one run on the check frame, after a first run if it had none."""
        if id(session) not in self._warm:
            self.run(session)
        started = time.perf_counter()
        session.run(self.feeds)
        return (time.perf_counter() - started) * 1e3


def verdict(
    probe: Probe, precision: str, session, cache: Path | None = None, fresh: bool = False, runs: int = 1
) -> Verdict:
    """The verdict on `session` (the graph at `precision`), from the cache unless `fresh`."""
    name, bundle = probe.name, probe.bundle
    export = bundle.component(name).files[precision].parity
    if precision == "fp32":
        return Verdict(name, precision, export)
    path = cache_dir(cache) / f"{_key(bundle.bundle_id, name, precision, session.providers)}.json"
    if not fresh and (stored := _load(path)) is not None:
        return Verdict(name, precision, export, stored["figures"], stored["measured_on"], cached=True)
    figures = probe.figures(session, precision, runs)
    machine = describe(session.providers)
    _store(
        path,
        {
            "bundle_id": bundle.bundle_id,
            "component": name,
            "precision": precision,
            "runs": runs,
            "figures": figures,
            "measured_on": machine,
            "measured_at": time.time(),
        },
    )
    return Verdict(name, precision, export, figures, machine)


def remeasure(
    bundle: Bundle, providers: Sequence[str] = ("cpu",), runs: int = CHECK_RUNS, cache: Path | None = None
) -> list[Verdict]:
    """A fresh verdict on every fp16 / int8 graph of the bundle, measured here (the cache refreshed)."""
    out = []
    for name, component in bundle.manifest.components.items():
        variants = [p for p in component.files if p != "fp32"] if component.kind == "onnx" else []
        if not variants:
            continue
        probe = Probe(bundle, name, providers)
        for precision in variants:
            session = bundle.session(name, precision, providers)
            out.append(verdict(probe, precision, session, cache, fresh=True, runs=runs))
    return out


def random_weights(bundle: Bundle) -> list[str]:
    """The components exported from random weights (`source.random_init`): plumbing and speed only."""
    return [name for name, c in bundle.manifest.components.items() if c.source.get("random_init")]


def _key(bundle_id: str, name: str, precision: str, providers: Sequence[str]) -> str:
    """32 hex digits over everything a measurement depends on."""
    payload = {
        "bundle_id": bundle_id,
        "component": name,
        "precision": precision,
        "machine": fingerprint(),
        "onnxruntime": onnxruntime_version(),
        "providers": list(providers),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _load(path: Path) -> dict | None:
    """A cached measurement, or None when absent or not one (then it is measured again)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        figures = stored["figures"]
        if not isinstance(stored["measured_on"], dict) or not all(
            isinstance(f["cosine"], (int, float)) for f in figures.values()
        ):
            return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return stored


def _store(path: Path, stored: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:  # a read-only disk costs a measurement at the next start, not correctness
        log.warning("precision verdicts not cached in %s (%s); the next start measures again", path.parent, e)
