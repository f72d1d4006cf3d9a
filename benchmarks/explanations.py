"""python -m benchmarks.explanations --bundle bundles/default [--per-kind 8] [--model-samples 24] [--out DIR]

How often an explanation says the right thing, on synthetic defects whose type
and place are known: scratches and cracks (line-like, brighter or darker) and
spots (blob-like, brighter or darker) drawn on crops of real textures
(scikit-image's brick, grass, gravel: benchmarks/synthetic.py). The truth is
measured from the drawing itself: its place is the 3x3 cell of the changed
pixels' centroid, its tone the sign of their mean grey change, its shape the
kind drawn. Each crop is inspected against 8 known-good crops of its texture,
the threshold set on 8 other good crops; every NG result's rule explanation is
scored on its strongest region, and the language model's sentence (where the
bundle has one) on the words it uses, with its latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from runtime.detect.detector import Detector
from runtime.detect.explanation import location_name
from runtime.prompts.checks import LOCATION_WORDS, SHAPES, TONES, words
from runtime.prompts.explain import ASK, SYSTEM, facts, model_sentence
from runtime.settings import AgentSettings

from . import reporting
from .synthetic import SIZE, add_defect, crop, texture

TEXTURES = ("brick", "grass", "gravel")
KINDS = {"scratch": "line-like", "crack": "line-like", "spot": "blob-like"}
REFERENCES, CALIBRATION = 8, 8
OUT = reporting.REPORTS / "explanations"


def spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A filled ellipse, much brighter or much darker than the texture: (HxWx3 uint8 RGB, HxW bool mask)."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cx, cy = (int(v) for v in rng.integers(40, SIZE - 40, size=2))
    axes = (int(rng.integers(6, 20)), int(rng.integers(6, 20)))
    cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    value = 235.0 if rng.random() < 0.5 else 20.0
    out = image.astype(np.float32)
    out[mask > 0] = value + rng.normal(0, 5, size=(int(mask.sum()), 3))
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out, (out != image).any(axis=-1)


def truth(clean: np.ndarray, defective: np.ndarray, mask: np.ndarray, kind: str) -> dict:
    """What an explanation should say about a drawn defect, measured from the drawing."""
    ys, xs = np.nonzero(mask)
    change = float(defective[mask].astype(np.float32).mean() - clean[mask].astype(np.float32).mean())
    place = location_name((xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0])
    return {"location": place, "tone": "brighter" if change > 0 else "darker", "shape": KINDS[kind], "kind": kind}


def samples(per_kind: int, seed: int):
    """(texture, references, calibration crops, [(defective RGB, truth)])) per texture, seeded."""
    rng = np.random.default_rng(seed)
    for name in TEXTURES:
        source = texture(name)
        refs = [crop(source, rng) for _ in range(REFERENCES)]
        good = [crop(source, rng) for _ in range(CALIBRATION)]
        tests = []
        for kind in KINDS:
            for _ in range(per_kind):
                clean = crop(source, rng)
                image, mask = spot(clean, rng) if kind == "spot" else add_defect(clean, kind, rng)
                tests.append((image, truth(clean, image, mask, kind)))
        yield name, refs, good, tests


def sentence_says(text: str, want: dict) -> dict:
    """Whether a sentence names the true place (all its place words, no others), tone and shape (no contrary word)."""
    said = set(words(text))
    place = set(want["location"].split())
    tone_ok = not said & TONES[{"darker": "brighter", "brighter": "darker"}[want["tone"]]]
    shape_ok = not said & SHAPES[{"line-like": "blob-like", "blob-like": "line-like"}[want["shape"]]]
    return {"location": place <= said and not (said & LOCATION_WORDS) - place, "kind": tone_ok and shape_ok}


def run(bundle: Path, per_kind: int, model_samples: int, seed: int, deadline_s: float) -> dict:
    detector = Detector.from_bundle(bundle)
    llm = None
    if detector.bundle.by_role("language_model") is not None:
        from runtime.prompts.language_model import LanguageModel

        llm = LanguageModel(detector.bundle)
    rows, model_rows = [], []
    for name, refs, good, tests in samples(per_kind, seed):
        memory = detector.remember(refs, colour="RGB")
        threshold = detector.calibrate(good, name, memory, colour="RGB")
        calibrated = detector.with_settings(replace(detector.settings, threshold=threshold))
        for image, want in tests:
            result = calibrated.detect(image, name, memory, colour="RGB")
            row = {"texture": name, **{f"true_{k}": v for k, v in want.items()}, "label": result.label}
            if result.label == "NG":
                e = result.explanation
                first = e["regions"][0] if e["regions"] else {}
                row |= {f"said_{k}": first.get(k, "") for k in ("location", "tone", "shape")}
                row |= {"text": e["text"], "explanation_ms": result.timings_ms.get("explanation")}
                if llm is not None and len(model_rows) < model_samples:
                    model_rows.append(_model_row(llm, e, name, want, deadline_s))
            rows.append(row)
        print(f"{name}: {sum(r['label'] == 'NG' for r in rows if r['texture'] == name)} NG", file=sys.stderr)
    return {"rows": rows, "model_rows": model_rows, "model": llm.name if llm else None, "seed": seed}


def _model_row(llm, rules: dict, category: str, want: dict, deadline_s: float) -> dict:
    started = time.perf_counter()
    out = model_sentence(llm, rules, category, AgentSettings(), deadline_s)
    row = {
        "seconds": round(time.perf_counter() - started, 2),
        "tokens": out.get("tokens", 0),
        "kept": "model_rejected" not in out,
    }
    row |= {
        "rejected": out.get("model_rejected", ""),
        "text": out["text"] if row["kept"] else out.get("model_sentence", ""),
    }
    row["facts"] = facts(category, rules)
    return row | ({f"model_{k}": v for k, v in sentence_says(out["text"], want).items()} if row["kept"] else {})


def summarise(data: dict) -> dict:
    ng = [r for r in data["rows"] if r["label"] == "NG"]
    share = lambda xs: round(sum(xs) / len(xs), 3) if xs else None  # noqa: E731
    rules = {
        "samples": len(data["rows"]),
        "ng": len(ng),
        "location": share([r["said_location"] == r["true_location"] for r in ng]),
        "tone": share([r["said_tone"] == r["true_tone"] for r in ng]),
        "shape": share([r["said_shape"] == r["true_shape"] for r in ng]),
        "kind": share([(r["said_tone"], r["said_shape"]) == (r["true_tone"], r["true_shape"]) for r in ng]),
        "explanation_ms_p50": statistics.median([r["explanation_ms"] for r in ng]) if ng else None,
    }
    per_kind = {
        k: {
            "ng": len(m := [r for r in ng if r["true_kind"] == k]),
            "location": share([r["said_location"] == r["true_location"] for r in m]),
            "kind": share([(r["said_tone"], r["said_shape"]) == (r["true_tone"], r["true_shape"]) for r in m]),
        }
        for k in KINDS
    }
    m = data["model_rows"]
    kept = [r for r in m if r["kept"]]
    seconds = sorted(r["seconds"] for r in m)
    model = {
        "asked": len(m),
        "kept": len(kept),
        "location": share([r["model_location"] for r in kept]),
        "kind": share([r["model_kind"] for r in kept]),
        "seconds_p50": statistics.median(seconds) if m else None,
        "seconds_max": seconds[-1] if m else None,
        "tokens_per_s": round(sum(r["tokens"] for r in m) / max(1e-9, sum(seconds)), 1) if m else None,
    }
    return {"rules": rules, "per_kind": per_kind, "model": model}


def markdown(data: dict, summary: dict, command: str) -> str:
    r, m = summary["rules"], summary["model"]
    kinds = [{"type": k, **v} for k, v in summary["per_kind"].items()]
    reasons = {}
    for row in data["model_rows"]:
        if row["rejected"]:
            key = row["rejected"].split(":")[0].split("(")[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
    examples = [row for row in data["rows"] if row["label"] == "NG"][:3]
    echoes = sum(r["kept"] and words(r["text"]) == words(r["facts"])[1:] for r in data["model_rows"])
    return "\n".join(
        [
            "# Explanation quality on synthetic defects",
            "",
            f"`{command}`",
            "",
            "Scratches and cracks (line-like) and spots (blob-like), each brighter or darker, drawn on crops of real "
            "textures (brick, grass, gravel); the truth is measured from the drawing. Every NG result's rule "
            "explanation is scored on its strongest region: location right (the same one of nine 3x3 names), kind "
            "right (tone and shape both right). Targets: location >= 90%, kind >= 80%. The rules' two constants "
            "(DEVIATING_SD 2.0, LINE_SLENDERNESS 4.0 in runtime/detect/explanation.py) were chosen on seed 0; "
            f"this run is seed {data['seed']}.",
            "",
            "## Rule explanations (in every NG line)",
            "",
            reporting.table([r], ["samples", "ng", "location", "tone", "shape", "kind", "explanation_ms_p50"]),
            "",
            reporting.table(kinds, ["type", "ng", "location", "kind"]),
            "",
            f"## The language model's sentence ({data['model'] or 'none in this bundle'})",
            "",
            "Asked for the first NG results; a sentence is kept only when checks.check_sentence finds nothing in it "
            "that the rule explanation lacks. Kept sentences are scored on their words against the truth. Latency is "
            "the whole call (prompt and answer) on this machine, with other work running beside it.",
            "",
            reporting.table([m], ["asked", "kept", "location", "kind", "seconds_p50", "seconds_max", "tokens_per_s"]),
            "",
            "Refusals: " + (", ".join(f"{k} ({v})" for k, v in sorted(reasons.items())) or "none"),
            "",
            f"Asked with the system prompt {SYSTEM!r} and the facts line followed by {ASK!r}. Kept sentences "
            f"that are the facts line word for word: {echoes} of {m['kept']} (a 135M model restates; it adds "
            "nothing the rules lack, which is all the checks let through).",
            "",
            "Every sentence asked for, with the facts the model was given:",
            "",
            reporting.table(
                [x | {"verdict": "kept" if x["kept"] else x["rejected"][:70]} for x in data["model_rows"]],
                ["facts", "text", "verdict", "seconds", "tokens"],
            ),
            "",
            "## Examples of rule explanations",
            "",
            *[f"- truth {x['true_location']}, {x['true_tone']} {x['true_kind']}: {x['text']}" for x in examples],
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.explanations", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    ap.add_argument("--per-kind", type=int, default=8, help="defects per kind and texture")
    ap.add_argument("--model-samples", type=int, default=24, help="NG results whose model sentence is measured")
    ap.add_argument("--deadline-s", type=float, default=10.0, help="time bound of one model sentence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    data = run(args.bundle, args.per_kind, args.model_samples, args.seed, args.deadline_s)
    summary = summarise(data)
    command = "python -m benchmarks.explanations " + " ".join(argv if argv is not None else sys.argv[1:])
    reporting.publish(args.out, "explanations", data | {"summary": summary}, markdown(data, summary, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
