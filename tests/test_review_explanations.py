"""A hostile review of explanations and the page's memory: what the checks say is the true reason, frames
that are not 8-bit colour (grey, 12-bit, 16-bit) keep their picture and their explanation, and a final
word that arrives after its frame left the recent results still reaches the NG gallery."""

import time
from dataclasses import replace

import numpy as np
import pytest

from runtime.detect.detector import Detector
from runtime.prompts.agent import PromptAgent
from runtime.prompts.checks import check_sentence
from runtime.serve.judging.gallery import Layers, keep
from tests.controlled import CATEGORY, part

DEFECT = (96, 64, 144, 112)
SOLAR = {
    "text": "NG solar cell, score 0.71 (threshold 0.50), 1 region. centre: a darker line-like mark, "
    "4.2 sd darker than the references, 0.8% of the frame.",
    "regions": [{"location": "centre", "tone": "darker", "shape": "line-like"}],
}
FACTS = "Facts: a darker line at the centre of the solar cell."


@pytest.fixture(scope="module")
def detector(controlled, tmp_path_factory):
    return Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path_factory.mktemp("text"))


def test_a_story_that_names_the_part_twice_is_refused_for_its_story_not_as_a_repeat():
    story = (
        "A darker line at the centre of the solar cell is a critical component of the solar cell's design, "
        "as it allows current to pass."
    )
    why = check_sentence(story, SOLAR, "You describe findings.", FACTS)
    assert why.startswith("adds what the evidence does not say") and "component" in why
    loop = "A darker line at the centre of the cell, a darker line at the centre of the cell."
    assert check_sentence(loop, SOLAR, "You describe findings.", FACTS) == "repeats itself"
    assert check_sentence("A darker line at the centre of the solar cell.", SOLAR, "You describe.", FACTS) == ""


def _twelve_bit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.uint16) << 4  # a 12-bit camera's frame: values below 4096


def test_a_twelve_bit_ng_frame_keeps_its_picture_and_gets_the_rules_not_a_skip(controlled, detector, tmp_path):
    from runtime.serve.frames.sources import Frame
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.judging.explainer import Explainer
    from runtime.serve.judging.state import State
    from runtime.serve.results.records import ResultsLog

    twelve = detector.with_settings(replace(detector.settings, input_bits=12))
    image = _twelve_bit(part(red_box=DEFECT))
    result = twelve.detect(image, CATEGORY)
    assert result.label == "NG"
    kept = keep({"run": "r", "frame_id": 1}, image, result)
    assert kept is not None and kept.image_bgr().shape == (256, 256, 3)
    assert abs(int(kept.image_bgr()[80, 120, 2]) - 255) < 8  # the red defect, at 8 bits of the 12
    state = State(4)
    assert state.next_jpeg(-1, 0.0)[1] is None
    state.publish({"label": "NG", "frame_id": 1, "run": "r"}, image, result)
    assert state.next_jpeg(-1, 0.0)[1] is not None  # the live view draws it too
    log = ResultsLog(tmp_path / "results.jsonl")
    explainer = Explainer(PromptAgent(twelve, None), log, state, Metrics(), 1, 5.0)
    said = explainer.explain(Frame(1, 1000.0, image, "test"), result, None)
    log.close()
    assert said["origin"] == "rules" and said["text"] == result.explanation["text"]


def test_grey_and_sixteen_bit_frames_are_kept_for_the_gallery(detector):
    grey = part(red_box=DEFECT)[:, :, 1]
    for image in (grey, (grey.astype(np.uint16) * 257)):
        result = detector.detect(image, CATEGORY)
        kept = keep({"run": "r", "frame_id": 1}, image, result)
        assert kept is not None and kept.image_bgr().shape == (256, 256, 3)
        assert kept.overlay_jpeg(Layers()) is not None


def test_a_final_word_after_its_frame_left_the_recent_results_reaches_the_gallery(detector):
    from runtime.serve.judging.state import State

    state = State(recent=2, gallery=3)
    image = part(red_box=DEFECT)
    ng = detector.detect(image, CATEGORY)
    ok = detector.detect(part(), CATEGORY)
    assert ng.label == "NG" and ok.label == "OK"
    state.publish({"label": "NG", "frame_id": 1, "run": "r", "explanation": ng.explanation}, image, ng)
    for i in (2, 3):  # two OK frames push the NG one out of the recent results
        state.publish({"label": "OK", "frame_id": i, "run": "r"}, image, ok)
    deadline = time.monotonic() + 10
    while not state.ng_frames() and time.monotonic() < deadline:
        time.sleep(0.02)  # the gallery's own thread keeps it
    model = {"text": "A red spot at the centre of the widget.", "origin": "SmolLM2", "regions": []}
    state.explain(1, model)
    assert [r["explanation"]["origin"] for r in state.ng_frames()] == ["SmolLM2"]
    assert state.find("r", 1)["explanation"] == model  # feedback and the detail read the same word


@pytest.fixture(scope="module")
def smollm2(tiny_bundle, tmp_path_factory):
    import shutil

    from export.build import build_bundle
    from export.mllm_export import MllmSpec
    from runtime.prompts.language_model import LanguageModel

    out = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("smol") / "b")
    build_bundle(out, "tiny", mllm=MllmSpec(packaged=True))
    return LanguageModel(Detector.from_bundle(out).bundle, threads=2)


# Facts on which the real SmolLM2-135M told a story when asked to "Write one sentence." (the benchmark's seed 1).
STORIES = [
    ("brick", "lower left", "darker", "line-like"),
    ("brick", "centre right", "darker", "line-like"),
    ("brick", "centre left", "brighter", "line-like"),
    ("brick", "lower left", "darker", "blob-like"),
    ("grass", "upper right", "brighter", "blob-like"),
]


@pytest.mark.parametrize("category, location, tone, shape", STORIES)
def test_the_real_smollm2_says_the_facts_without_a_story(smollm2, category, location, tone, shape):
    from runtime.prompts.explain import model_sentence
    from runtime.settings import AgentSettings

    region = {"location": location, "tone": tone, "shape": shape}
    rules = {"text": f"NG {category}, 1 region. {location}: a {tone} {shape} mark.", "origin": "rules"}
    out = model_sentence(smollm2, rules | {"regions": [region]}, category, AgentSettings(), 10.0)
    assert "model_rejected" not in out, out
    assert out["origin"] == smollm2.name and location in out["text"] and tone in out["text"]


def test_an_ng_frame_offered_while_the_explainer_closes_still_gets_its_line(detector, tmp_path):
    """The inspector may still offer a frame while the server closes the explainer (it waits 30 s for the
    inspector, a slow frame takes longer): the offer's check and its put must not let close drain between."""
    import json
    import queue
    import threading

    from runtime.serve.frames.sources import Frame
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.judging.explainer import Explainer
    from runtime.serve.judging.state import State
    from runtime.serve.results.records import ResultsLog, record_of

    image = part(red_box=DEFECT)
    result = detector.detect(image, CATEGORY)
    log = ResultsLog(tmp_path / "results.jsonl")
    explainer = Explainer(PromptAgent(detector, None), log, State(4), Metrics(), 4, 1.0)  # never started
    closer = threading.Thread(target=explainer.close)

    class Slow(queue.Queue):
        def put_nowait(self, item):  # close begins between the offer's check and its put
            closer.start()
            closer.join(0.5)
            super().put_nowait(item)

    explainer.queue = Slow(4)
    frame = Frame(1, 1000.0, image, "test")
    log.write(record_of(frame, result, "run-1"))
    explainer.offer(frame, result, None, "run-1")
    closer.join(10)
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [x["explanation"]["origin"] for x in lines if x["label"] == "EXPLANATION"] == ["skipped"]


def test_a_tone_said_of_geometry_alone_is_refused_saying_the_evidence_has_no_tone():
    """A Result built without pixels is explained by geometry only (no tone, no shape): the refusal says so,
    rather than 'the evidence says None'."""
    geometry = {"text": "NG part: centre, 2% of the frame.", "regions": [{"location": "centre", "area_percent": 2.0}]}
    why = check_sentence("A darker change at the centre of the part.", geometry, "Say it.", "Facts: a change.")
    assert why == "calls it darker; the evidence says nothing of its tone"
