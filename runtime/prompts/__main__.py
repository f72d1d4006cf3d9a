"""python -m runtime.prompts --bundle DIR --category NAME --normal DIR [--samples DIR] [--out FILE]

Builds a category's prompt bank with the bundle's language model (see
runtime/agent.py) and writes it where the detector looks for it
(BUNDLE/prompts/CATEGORY.json unless --out says otherwise).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .agent import AgentSettings, PromptAgent
from ..detect.detector import Detector
from ..detect.frames import list_images, read_image
from .language_model import LanguageModel
from ..bundle.manifest import BundleError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.prompts", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--normal", type=Path, required=True, help="folder of known-good images")
    ap.add_argument("--samples", type=Path, help="folder of defective samples (optional)")
    ap.add_argument("--out", type=Path, help="bank file (default BUNDLE/prompts/CATEGORY.json)")
    ap.add_argument("--seed", type=int, default=AgentSettings.seed)
    ap.add_argument("--retries", type=int, default=AgentSettings.retries)
    ap.add_argument("--max-prompts", type=int, default=AgentSettings.max_prompts)
    ap.add_argument("--threads", type=int, help="CPU threads for the language model")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        detector = Detector.from_bundle(args.bundle)
        llm = LanguageModel(detector.bundle, threads=args.threads) if "mllm" in detector.bundle.manifest.components else None
        if llm is None:
            print("no language model in this bundle: descriptions come from rules on the detector's evidence",
                  file=sys.stderr)  # fmt: skip
        settings = replace(AgentSettings(), seed=args.seed, retries=args.retries, max_prompts=args.max_prompts)
        normals = [read_image(p) for p in list_images([args.normal])]
        samples = [read_image(p) for p in list_images([args.samples])] if args.samples else None
        bank = PromptAgent(detector, llm, settings).build_bank(
            args.category, normals, samples, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (BundleError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"prompts failed: {e}", file=sys.stderr)
        return 1
    out = args.out or detector.prompt_dir / f"{args.category}.json"
    bank.write(out)
    for p in bank.prompts:
        print(f"{'KEEP' if p.kept else 'drop'}  {p.text}\n      {p.reason}")
    print(f"{len(bank.kept)} of {len(bank.prompts)} prompts kept -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
