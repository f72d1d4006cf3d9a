"""lineside SUBCOMMAND ...: the same code as the `python -m` commands, which stay.

Each subcommand is imported only when it runs, so `lineside serve` on a box
without torch never touches export or the benchmarks.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # subcommand -> (module with main(argv), what it does)
    "serve": ("runtime.serve.__main__", "inspect a camera, stream, video or folder beside the line"),
    "detect": ("runtime.detect.__main__", "inspect image files in a batch"),
    "check": ("runtime.check", "verify a bundle and run it once on this box"),
    "prompts": ("runtime.prompts.__main__", "build a category's prompt bank with the language model"),
    "export": ("export.__main__", "build a bundle from checkpoints (needs the export extra: torch)"),
    "audit": ("runtime.audit", "check a results log's hash chain: lineside audit verify LOG"),
    "plc-sim": ("lineside.plcsim", "be the PLC: run the handshake against a running serve (docs/plc.md)"),
}
# `lineside export triton`: a Triton model repository from a bundle, written without torch (the GPU
# server's box need not have the export extra).
EXPORT_TRITON = "runtime.bundle.triton_repo"
BENCHMARKS = ("accuracy", "latency", "parity", "soak", "index", "demo", "neighbours", "cameras", "explanations")


def usage() -> str:
    rows = [f"  {name:<9} {what}" for name, (_, what) in COMMANDS.items()]
    rows.append(f"  {'export triton':<9} write a Triton model repository from a bundle (--bundle B --repo R)")
    rows.append(f"  {'bench':<9} run a benchmark: lineside bench {{{','.join(BENCHMARKS)}}} ... (bench extra)")
    return "usage: lineside SUBCOMMAND [ARGS...]   (lineside SUBCOMMAND --help for its options)\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            print(f"lineside bench: choose one of {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        module, rest = f"benchmarks.{rest[0]}", rest[1:]
    elif name == "export" and rest[:1] == ["triton"]:
        module, rest = EXPORT_TRITON, rest[1:]
    elif name in COMMANDS:
        module = COMMANDS[name][0]
    else:
        print(f"lineside: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        entry = importlib.import_module(module).main
    except ImportError as e:
        print(f"lineside {name}: {e} (install the extra it needs, see the README)", file=sys.stderr)
        return 2
    return entry(rest) or 0
