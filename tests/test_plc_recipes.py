"""Recipes (issue 27, item 3): the PLC selects the inspection configuration by index. The state machine alone,
the cameras file's recipes checked at start, then a real serve on loopback with a real asyncua client as
the PLC: a recipe change between parts changes the next result's category, threshold and audit.recipe and
RecipeActive; an unknown index and a recipe whose references failed screening are refused with the reason
and the recipe in force stays; a change written while a part is in work comes into force after it. The same
over Modbus, plc-sim's pymodbus server as the PLC's memory: RecipeIndex H+26, RecipeActive H+13, the
refusal's code H+14."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from lineside.plcsim import ModbusPeer, UaPeer
from runtime.detect.detector import Detector
from runtime.serve import Server, Settings
from runtime.serve.cameras import read_cameras
from runtime.serve.frames.sources import FrameSource
from runtime.serve.results.plc.handshake import Handshake
from tests.brokers import free_port
from tests.controlled import CATEGORY, part
from tests.serving import DEFECT, result_lines, wait_for

asyncua = pytest.importorskip("asyncua")


# --- the state machine, no transport ---------------------------------------------------------------------


def _machine(recipes: dict):
    given, selected = [], []

    def submit(part_id):
        given.append(part_id)
        return f"plc-{len(given)}"

    def select(index):
        selected.append(index)
        return recipes.get(index, f"recipe {index} is not configured")

    return Handshake(4, submit, 5.0, select=select), selected


def test_a_recipe_is_put_in_force_between_parts_and_an_unknown_one_refused():
    machine, selected = _machine({1: None, 2: None})
    assert machine.view().recipe_active == 0
    machine.recipe_index(2)
    assert selected == [2] and machine.view().recipe_active == 2 and machine.view().why == ""
    machine.recipe_index(2)  # the same index read again: nothing tried twice
    assert selected == [2]
    machine.recipe_index(9)
    view = machine.view()
    assert view.recipe_active == 2 and view.trigger_ready  # refused: the old one stays, triggers still taken
    assert view.why == "recipe 9 refused: recipe 9 is not configured; recipe 2 stays in force" == view.recipe_refused
    machine.recipe_index(1)
    assert machine.view().recipe_active == 1 and machine.view().why == ""


def test_a_recipe_asked_for_while_a_part_is_in_work_comes_after_it():
    machine, selected = _machine({1: None})
    machine.trigger_level(True, "SN-1")
    machine.recipe_index(1)
    assert selected == [] and machine.view().recipe_active == 0 and machine.view().busy
    machine.result({"label": "OK", "frame_id": 1, "image_score": 0.1, "trigger_id": "plc-1"})
    assert selected == [1] and machine.view().recipe_active == 1 and not machine.view().busy


def test_without_recipes_an_index_is_refused_saying_so():
    machine = Handshake(2, lambda part: "plc-1")
    machine.recipe_index(3)
    assert machine.view().recipe_active == 0 and "this camera has no recipes" in machine.view().why


# --- the cameras file's recipes, checked at start --------------------------------------------------------


def _write(folder, images) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"ref{i}.png"), image)
    return str(folder)


def _noisy(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (256, 256, 3), dtype=np.uint8)


def _cameras(tmp_path, recipes: str) -> Settings:
    good = _write(tmp_path / "good", [part() for _ in range(3)])
    bad = _write(tmp_path / "bad", [_noisy(1), _noisy(2), _noisy(3), part()])  # a flat frame among textured ones
    path = tmp_path / "cameras.yaml"
    path.write_text(
        "cameras:\n  - id: '0'\n    source: line-camera\n    recipes:\n"
        + recipes.format(good=good, bad=bad, category=CATEGORY)
    )
    return path


RECIPES = """\
      - {{index: 1, category: {category}, references: {good}, threshold: 0.9, false_alarm_mode: expected}}
      - {{index: 2, category: other_part, references: {good}, threshold: 0.2, false_alarm_mode: guarantee}}
      - {{index: 3, category: {category}, references: {bad}, threshold: 0.5}}
"""


@pytest.mark.parametrize(
    "recipes, why",
    [
        ("      - {{index: 1, category: x, references: {good}}}\n", "camera 0, recipe 1: no threshold"),
        (
            "      - {{index: 1, category: x, references: {good}, threshold: 2}}\n",
            "camera 0, recipe 1: setting threshold",
        ),
        ("      - {{index: 0, category: x, references: {good}, threshold: 0.5}}\n", "recipe 1: index must be"),
        ("      - {{index: 4, category: x, references: /nowhere, threshold: 0.5}}\n", "recipe 4: references /nowhere"),
        ("      - {{index: 4, category: x, references: {good}, threshold: 0.5, colour: red}}\n", "unknown fields"),
        (
            "      - {{index: 4, category: x, references: {good}, threshold: 0.5, false_alarm_mode: maybe}}\n",
            "recipe 4",
        ),
        ("      - {{index: 5, category: x, references: {good}, threshold: 0.5}}\n" * 2, "5 given twice"),
    ],
)
def test_a_bad_recipe_refuses_serve_at_start_naming_the_recipe_and_field(tmp_path, recipes, why):
    with pytest.raises(ValueError, match=why) as e:
        read_cameras(_cameras(tmp_path, recipes), Settings.of(category=CATEGORY))
    assert "\n" not in str(e.value)


# --- serve over OPC UA, a real client as the PLC ----------------------------------------------------------


class Gated(FrameSource):
    """A live camera of good parts (every other one defective) whose frames stop while `gate` is clear."""

    live = True

    def __init__(self):
        super().__init__("line-camera")
        self.n, self.gate = 0, threading.Event()
        self.gate.set()

    def open(self) -> None:
        pass

    def read(self):
        self.gate.wait()
        time.sleep(0.01)
        self.n += 1
        return True, part(red_box=DEFECT if self.n % 2 else None), ""


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory) -> Detector:
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def _until(plc: UaPeer, condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition(seen := plc.read()):
        assert time.monotonic() < deadline, f"{what}; the PLC reads {seen}"
        time.sleep(0.003)
    return seen


def _part(plc: UaPeer, part_id: str):
    """One part: trigger, wait for its result, acknowledge it; the Signals it was presented with."""
    _until(plc, lambda s: s.trigger_ready, "never ready")
    before = plc.read().accepted
    plc.trigger(True, part_id)
    _until(plc, lambda s: s.accepted != before, "trigger not taken")
    plc.trigger(False)
    seen = _until(plc, lambda s: s.result_ready, "no result presented")
    plc.ack(seen.result_id)
    _until(plc, lambda s: s.result_id != seen.result_id, "result not taken down")
    return seen


@pytest.fixture
def line(controlled, detector, tmp_path):
    port, source = free_port(), Gated()
    settings = Settings.of(
        cameras=_cameras(tmp_path, RECIPES),
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        trigger="software",
        results=tmp_path / "results.jsonl",
        sink=[f"opcua-server://127.0.0.1:{port}/lineside?handshake=1"],
    )
    server = Server(settings, detector=detector, source=source).start()
    plc = UaPeer(f"opcua://127.0.0.1:{port}/lineside")
    plc.connect()
    try:
        yield server, plc, source
    finally:
        plc.close()
        server.shutdown()


def _judged(server) -> dict:
    """part id -> (category, threshold, audit.recipe) of its result line."""
    lines = [x for x in result_lines(server) if x["label"] in ("OK", "NG", "ERROR")]
    return {x["part_id"]: (x["category"], x["settings"]["threshold"], x["audit"]["recipe"]) for x in lines}


def test_a_recipe_change_between_parts_changes_the_next_result_and_an_unknown_one_is_refused(line):
    server, plc, _ = line
    assert _part(plc, "P1").recipe_active == 0
    plc.recipe(2)
    _until(plc, lambda s: s.recipe_active == 2, "recipe 2 never in force")
    _part(plc, "P2")
    plc.recipe(7)
    seen = _until(plc, lambda s: "recipe 7 refused" in s.why, "recipe 7 not refused")
    assert seen.recipe_active == 2 and "recipe 7 is not configured (recipes: 0, 1, 2, 3)" in seen.why, seen
    _part(plc, "P3")
    plc.recipe(3)
    seen = _until(plc, lambda s: "recipe 3 refused" in s.why, "recipe 3 not refused")
    assert seen.recipe_active == 2 and "fail screening: ref3.png empty" in seen.why, seen.why
    assert seen.why.endswith("recipe 2 stays in force")
    plc.recipe(1)
    seen = _until(plc, lambda s: s.recipe_active == 1, "recipe 1 never in force")
    assert seen.why == ""
    _part(plc, "P4")
    judged = _judged(server)
    assert judged == {
        "P1": (CATEGORY, 0.5, "0"),
        "P2": ("other_part", 0.2, "2"),
        "P3": ("other_part", 0.2, "2"),  # the unknown index left recipe 2 in force
        "P4": (CATEGORY, 0.9, "1"),
    }


def test_a_recipe_asked_for_while_a_part_is_in_work_comes_into_force_after_it(line):
    server, plc, source = line
    handshake = server.sinks[0].handshakes["0"]
    _until(plc, lambda s: s.trigger_ready, "never ready")
    source.gate.clear()  # no frame comes: the triggered part stays in work
    time.sleep(0.1)  # a frame read before the gate closed is older than the trigger: not this part's
    plc.trigger(True, "Q1")
    _until(plc, lambda s: s.accepted == 1, "trigger not taken")
    plc.trigger(False)
    plc.recipe(2)
    wait_for(lambda: handshake.recipe_wanted == 2, 10, "RecipeIndex 2 never read")
    seen = plc.read()
    assert seen.recipe_active == 0 and seen.state == "Executing"  # read, not in force: the part is in work
    source.gate.set()
    result = _until(plc, lambda s: s.result_ready, "no result presented")
    plc.ack(result.result_id)
    _until(plc, lambda s: s.recipe_active == 2, "recipe 2 never in force after the part")
    _part(plc, "Q2")
    assert _judged(server) == {"Q1": (CATEGORY, 0.5, "0"), "Q2": ("other_part", 0.2, "2")}


# --- serve over Modbus, plc-sim's pymodbus server as the PLC's memory --------------------------------------


def test_over_modbus_a_recipe_change_between_parts_changes_the_next_result_and_an_unknown_one_is_refused(
    controlled, detector, tmp_path
):
    port = free_port()
    plc = ModbusPeer(f"127.0.0.1:{port}", 200, 1)
    plc.connect()
    settings = Settings.of(
        cameras=_cameras(tmp_path, RECIPES),
        bundle=controlled,
        category=CATEGORY,
        port=0,
        explain=False,
        trigger="software",
        results=tmp_path / "results.jsonl",
        sink=[f"modbus://127.0.0.1:{port}?unit=1&handshake=200&poll_ms=5"],
    )
    server = Server(settings, detector=detector, source=Gated()).start()
    try:
        assert _part(plc, "M1").recipe_active == 0
        plc.recipe(2)
        _until(plc, lambda s: s.recipe_active == 2, "recipe 2 never in force (H+13)")
        _part(plc, "M2")
        plc.recipe(7)
        seen = _until(plc, lambda s: s.why.startswith("recipe refused"), "recipe 7 not refused (H+14)")
        assert seen.recipe_active == 2 and "reason 1 " in seen.why, seen  # 1: not configured
        _part(plc, "M3")
        plc.recipe(3)
        seen = _until(plc, lambda s: "reason 2 " in s.why, "recipe 3 not refused for its references")
        assert seen.recipe_active == 2
        plc.recipe(1)
        seen = _until(plc, lambda s: s.recipe_active == 1, "recipe 1 never in force")
        assert seen.why == ""
        _part(plc, "M4")
        assert _judged(server) == {
            "M1": (CATEGORY, 0.5, "0"),
            "M2": ("other_part", 0.2, "2"),
            "M3": ("other_part", 0.2, "2"),  # the unknown index left recipe 2 in force
            "M4": (CATEGORY, 0.9, "1"),
        }
    finally:
        server.shutdown()
        plc.close()
