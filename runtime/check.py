"""python -m runtime.check DIR: prove a bundle loads and runs here, torch-free.

Verifies every hash, opens every graph at every precision (checking its inputs
and outputs against the manifest), then feeds each one real inputs made by the
runtime's own preprocessing and tokenizer, and prints what ran where and how long
it took. Finally it runs the real detector once, end to end, on the same frame:
graphs that each run can still fail together (a grid or tap list that does not
fit the outputs), and a bundle that passes here must produce results on the line.
Then every fp16 / int8 graph is measured again against fp32 on this machine
(verify.py, a few runs on the same frame) and printed beside its export figure
and the machine that measured it, with the verdict the runtime acts on: a
variant outside its bound, here or at export, is refused unless
--allow-unverified-precision. Bundles from random weights are named as such.
Exit status 1 with the reason, on one line, when anything is wrong, and when a
variant the manifest calls within its bound measures outside it here: the
manifest's claim is false on this machine, and a gate on this exit status must
see it. `--allow int8` accepts that for a named precision (the runtime still
refuses the variant); a variant the manifest itself records as outside is no
false claim and leaves the status 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .bundle.loader import Bundle, one_line
from .bundle.manifest import BundleError
from .bundle.preprocess import clip_input, sam_input, sam_prompts
from .bundle.smoke import PROMPTS, check_frame, run_graphs
from .bundle.verify import Verdict, random_weights, remeasure
from .detect.detector import Detector
from .machine import describe, summary
from .precisions import PRECISIONS

log = logging.getLogger("lineside.check")


def check(
    path: Path, providers: tuple[str, ...] = ("cpu",), end_to_end: bool = True
) -> tuple[Bundle, list[tuple[str, ...]]]:
    """Run every graph once (bundle/smoke.py), then the detector (unless `end_to_end` is False, for a bundle of
    parts such as a language model alone); rows of (component, precision, providers, ms, outputs)."""
    bundle = Bundle.open(path)
    rows = run_graphs(bundle, providers)
    if end_to_end:
        rows.append(check_detector(bundle, check_frame(), providers))
    return bundle, rows


def check_detector(bundle: Bundle, frame: np.ndarray, providers: tuple[str, ...] = ("cpu",)) -> tuple[str, ...]:
    """Run `Detector.detect` once on `frame`; refuse an ERROR or any non-finite number.

    SAM's gate is opened so the region stage runs whenever the map has
    candidates; without a language branch the frame and its mirror image stand
    in as known-good references. The text cache is a fresh folder, so the text
    graph really runs.
    """
    if bundle.by_role("image_encoder") is None:
        raise BundleError(
            f"{bundle.path} has no image encoder (role image_encoder), so it cannot "
            "score a frame; export one into it: python -m export clip|all ..."
        )
    with tempfile.TemporaryDirectory(prefix="lineside-check-") as cache:
        detector = Detector.from_bundle(bundle.path, providers=providers, sam_gate=0.0, text_cache_dir=Path(cache))
        return check_detection(detector, frame)


def start_check(detector, category: str = "part", frame: np.ndarray | None = None) -> None:
    """What `python -m runtime.check` proves, on the graphs a serving `detector` will run: each of
    them once on the check frame at the precision and providers it was opened with (the text graph
    past its cache), then one `detect` end to end with SAM's gate open. BundleError with check's
    own one-line reason, so a bundle check refuses never starts serving.

    The manifest's fields were checked when the bundle was opened (loader.py); this finds what
    only running can: weights that give NaN, a pipeline whose parts do not fit together.
    """
    frame = check_frame() if frame is None else frame
    for name, precision, run in _graph_runs(detector, frame):
        try:
            outputs = run()
        except Exception as e:  # whatever the graph raised, the answer is one line naming it
            raise BundleError(f"{name} ({precision}) failed on a plain test frame: {one_line(e)}") from e
        if not all(np.isfinite(np.asarray(o)).all() for o in outputs):
            raise BundleError(f"{name} ({precision}) produced NaN or inf on a plain test frame")
    check_detection(detector.with_settings(dataclasses.replace(detector.settings, sam_gate=0.0)), frame, category)


def _graph_runs(detector, frame: np.ndarray):
    """(graph, precision, run) for each graph of `detector`; run() gives its outputs on `frame`."""
    encoder = detector.encoder
    image = encoder.component
    yield (
        image.name,
        encoder.precision,
        lambda: list(encoder.session.run({image.inputs[0].name: clip_input(frame, image.preprocessing)}).values()),
    )
    if detector.text is not None:
        text = detector.text.encoder
        yield text.component.name, "fp32", lambda: [text.fresh(PROMPTS)]
    refiner = detector.refiner
    if refiner is None:
        return
    sam, embeddings = refiner.encoder_c, []

    def encode():
        embeddings[:] = list(refiner.encoder.run({sam.inputs[0].name: sam_input(frame, sam.preprocessing)}).values())
        return embeddings

    def decode():
        h, w = frame.shape[:2]
        prompts = sam_prompts((h, w), refiner.decoder_c.preprocessing, np.array([[w / 3, h / 2]]), np.array([1]))
        return list(refiner.decoder.run({refiner.decoder_c.inputs[0].name: embeddings[0], **prompts}).values())

    yield sam.name, refiner.precisions[sam.name], encode
    yield refiner.decoder_c.name, refiner.precisions[refiner.decoder_c.name], decode


def check_detection(detector, frame: np.ndarray, category: str = "part") -> tuple[str, ...]:
    """One `detect` on `frame` (the frame and its mirror as references when there is no
    language branch); BundleError on an ERROR or any non-finite number, else the report row."""
    references = None if detector.has_language else [frame, np.ascontiguousarray(frame[:, ::-1])]
    started = time.perf_counter()
    try:
        result = _quiet_detect(detector, frame, references, category)
    except Exception as e:  # the detector refused its own bundle's output: that is the finding
        raise BundleError(f"the detector failed end to end on the check frame: {one_line(e)}") from e
    ms = (time.perf_counter() - started) * 1e3
    if result.label == "ERROR":
        raise BundleError(f"the detector returned ERROR on the check frame: {' '.join(str(result.error).split())}")
    if bad := _non_finite(result):
        raise BundleError(f"the detector's {bad} is not finite on the check frame (label {result.label})")
    what = f"{result.label} {result.image_score:.3f} ({'+'.join(result.branches)}, refiner {result.refiner})"
    return (
        "detector",
        "fp32",
        ",".join(p.replace("ExecutionProvider", "") for p in result.providers),
        f"{ms:.1f}",
        what,
    )


def _quiet_detect(detector, frame: np.ndarray, references, category: str = "part"):
    """detect() with logging and numpy warnings held back: the check reports what went
    wrong itself, on one line, and a generic-prompts note is noise here."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return detector.detect(frame, category, references=references, colour="RGB")
    finally:
        logging.disable(previous)


def _non_finite(result) -> str | None:
    """The name of the first number of `result` that is NaN or infinite, or None."""
    numbers = {"image_score": result.image_score, **{f"timings_ms.{k}": v for k, v in result.timings_ms.items()}}
    for i, region in enumerate(result.regions):
        numbers |= {f"regions[{i}].{k}": getattr(region, k) for k in ("score", "probability", "sam_iou")}
    for name, value in numbers.items():
        if value is not None and not np.isfinite(value):
            return name
    if result.anomaly_map is None or not np.isfinite(result.anomaly_map).all():
        return "anomaly_map"
    return None


class OneLineFormatter(logging.Formatter):
    """Each record as its message on one line, without tracebacks: this is a verdict, not a debugger."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(record.getMessage().split())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.check", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--providers", default="cpu", help="comma list, in order: tensorrt,cuda,cpu")
    ap.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=[p for p in PRECISIONS if p != "fp32"],
        metavar="PRECISION",
        help="exit 0 although variants at PRECISION (fp16 or int8) measure outside the bound their manifest "
        "records as held; repeat for both",
    )
    args = ap.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        bundle, rows = check(args.bundle, tuple(args.providers.split(",")))
    except (BundleError, FileNotFoundError) as e:
        print(f"bundle check failed: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except Exception as e:  # whatever else broke, the answer is one line and exit 1, not a traceback
        print(f"bundle check failed: {one_line(e)}", file=sys.stderr)
        return 1
    _print_table(("component", "precision", "provider", "ms", "output shapes"), rows)
    try:
        verdicts = remeasure(bundle, tuple(args.providers.split(",")))
    except Exception as e:  # a variant that loaded and ran above but cannot be measured: one line
        print(f"bundle check failed: re-measuring the precision variants: {one_line(e)}", file=sys.stderr)
        return 1
    print(
        f"bundle {bundle.bundle_id} ({bundle.manifest.profile}): every graph loaded and ran, "
        "and the detector produced a finite result"
    )
    _print_verdicts(bundle, verdicts)
    if broken := false_claims(verdicts, args.allow):
        print(f"bundle check failed: {broken}", file=sys.stderr)
        return 1
    return 0


def false_claims(verdicts: list[Verdict], allowed=()) -> str:
    """One line on the variants the manifest calls within bound that measure outside it here (those at
    `allowed` precisions left out), or "" when every such claim holds."""
    false = [v for v in verdicts if v.holds_in_manifest and not v.holds_here and v.precision not in allowed]
    if not false:
        return ""
    named = "; ".join(f"{v.component} {v.precision} {v.why_not()}" for v in false)
    precisions = sorted({v.precision for v in false})
    return (
        f"the manifest says these variants hold their parity bound, but here they do not: {named}. Re-export "
        f"them on this kind of machine, run another precision, or give {' '.join('--allow ' + p for p in precisions)} "
        "to accept it"
    )


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _print_verdicts(bundle: Bundle, verdicts: list[Verdict]) -> None:
    """Each fp16 / int8 graph re-measured against fp32 here, beside its export figure and where that was
    measured; then what is refused, and whether the weights are random."""
    if verdicts:
        print(f"\nprecision variants against fp32 on this machine: {summary(describe())}")
        machines: list[str] = []
        rows = [_verdict_row(v, machines) for v in verdicts]
        _print_table(
            (
                "component",
                "precision",
                "cosine here",
                "mask IoU here",
                "bound",
                "here",
                "cosine at export",
                "at export",
            ),
            rows,
        )
        for i, machine in enumerate(machines, 1):
            print(f"  [{i}] export measured on {machine}")
        outside = [f"{v.component} {v.precision}" for v in verdicts if not v.holds]
        if outside:
            print(
                f"outside their parity bound: {', '.join(outside)}; the runtime refuses them (detector, serve, "
                "detect, benchmarks) unless --allow-unverified-precision; --precision auto skips them"
            )
        else:
            print("every precision variant holds its parity bound here and at export")
    if random := random_weights(bundle):
        print(
            f"random weights (source.random_init) in {', '.join(random)}: these graphs run, but their figures "
            "and results say nothing about accuracy"
        )


def _verdict_row(v: Verdict, machines: list[str]) -> tuple[str, ...]:
    here_iou = [f["mask_iou"] for f in (v.here or {}).values() if "mask_iou" in f]
    bound = f"cos>={v.bound.get('min_cosine', '?')}" + (f" IoU>={v.bound.get('min_mask_iou', '?')}" if here_iou else "")
    machine = summary(v.export["measured_on"]) if isinstance(v.export.get("measured_on"), dict) else "not recorded"
    if machine not in machines:
        machines.append(machine)
    export_cos = v.cosine("export")
    return (
        v.component,
        v.precision,
        f"{v.cosine():.5f}",
        f"{min(here_iou):.4f}" if here_iou else "-",
        bound,
        "holds" if v.holds_here else "OUTSIDE",
        "-" if export_cos is None else f"{export_cos:.5f}",
        f"{'holds' if v.holds_in_manifest else 'OUTSIDE'} [{machines.index(machine) + 1}]",
    )


if __name__ == "__main__":
    sys.exit(main())
