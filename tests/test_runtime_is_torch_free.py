"""The runtime must run on a box without torch: importing it must not pull torch in."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import runtime

TRAINING_SIDE = ("torch", "open_clip", "segment_anything", "torchvision", "export")


def test_every_runtime_module_imports_without_torch():
    names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
    assert {
        "runtime.bundle.loader",
        "runtime.bundle.tokenizer",
        "runtime.serve.server",
        "runtime.prompts.agent",
    } <= set(names)
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {TRAINING_SIDE!r}]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(runtime.__file__).parents[1]
    )
    assert done.returncode == 0, f"runtime imported training-side modules: {done.stdout} {done.stderr}"
