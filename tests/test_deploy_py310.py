"""Issue 29, item 2: the Python 3.10 environment deploy/test-py310 tests the runtime in is the Jetson's
(deploy/constraints-jetson.txt) wherever the Jetson pins a package, with numpy 1.26 and without torch."""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _pins(path: Path) -> dict[str, str]:
    rows = [line.split("==") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in rows}


def test_the_py310_environment_keeps_every_jetson_pin_and_no_torch():
    jetson, py310 = _pins(DEPLOY / "constraints-jetson.txt"), _pins(DEPLOY / "constraints-py310.txt")
    assert {name: py310.get(name) for name in jetson} == jetson
    assert py310["numpy"].startswith("1.26.") and py310["opencv-python-headless"].startswith("4.8.0.")
    assert not {"torch", "torchvision", "open-clip-torch", "onnxruntime-gpu"} & set(py310)
