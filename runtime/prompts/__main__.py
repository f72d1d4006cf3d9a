"""python -m runtime.prompts --bundle DIR --category NAME --normal DIR [--samples DIR] [--out FILE]

Builds a category's prompt bank with the bundle's language model (see
runtime/prompts/agent.py) and writes it where the detector looks for it
(BUNDLE/prompts/CATEGORY.json, or --prompt-dir, unless --out says otherwise).
Every job, detector and agent setting is a flag, a --config key and a
LINESIDE_* variable (runtime/settings.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..bundle.manifest import BundleError
from ..detect.detector import Detector
from ..detect.frames import list_images, printable, read_image
from ..options import add_arguments, load
from .agent import PromptAgent
from .language_model import LanguageModel


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.prompts", description=__doc__.splitlines()[0])
    ap.add_argument("--normal", type=Path, required=True, help="folder of known-good images")
    ap.add_argument("--samples", type=Path, help="folder of defective samples (optional)")
    ap.add_argument("--out", type=Path, help="bank file (default BUNDLE/prompts/CATEGORY.json)")
    add_arguments(ap, "job", "agent", "detector")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        settings = load(args)
        job, agent = settings.job, settings.agent
        detector = Detector.from_bundle(job.bundle, settings.detector)
        llm = None
        if detector.bundle.by_role("language_model") is not None:
            llm = LanguageModel(detector.bundle, threads=agent.llm_threads, n_ctx=agent.llm_context)
        else:
            print(
                "no language model in this bundle: descriptions come from rules on the detector's evidence",
                file=sys.stderr,
            )
        pixels = settings.detector.max_image_pixels
        normal_paths = list_images([args.normal])
        sample_paths = list_images([args.samples]) if args.samples else []
        normals = [read_image(p, pixels) for p in normal_paths]
        samples = [read_image(p, pixels) for p in sample_paths] or None
        bank = PromptAgent(detector, llm, agent).build_bank(
            job.category,
            normals,
            samples,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            normal_names=[printable(p.name) for p in normal_paths],  # the provenance names files, not only hashes
            sample_names=[printable(p.name) for p in sample_paths],
        )
    except (BundleError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"prompts failed: {e}", file=sys.stderr)
        return 1
    out = args.out or Path(settings.detector.prompt_dir or job.bundle / "prompts") / f"{job.category}.json"
    bank.write(out)
    for p in bank.prompts:
        print(f"{'KEEP' if p.kept else 'drop'}  {p.text}\n      {p.reason}")
    print(f"{len(bank.kept)} of {len(bank.prompts)} prompts kept -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
