"""Explanations: the rule explanation measured from pixels, the checks on a model's sentence, and
serve writing one explanation per NG frame to the log, the sinks and the page, with the real SmolLM2."""

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.build import build_bundle
from export.mllm_export import MllmSpec
from runtime.detect.detector import Detector
from runtime.detect.explanation import PixelStats, location_name, rule_explanation, shape_of
from runtime.detect.regions import to_frame
from runtime.prompts.agent import PromptAgent
from runtime.prompts.checks import check_sentence
from runtime.prompts.explain import ASK, SYSTEM, first_sentences
from runtime.prompts.language_model import LanguageModel
from tests.brokers import Broker
from tests.controlled import CATEGORY, part

DEFECT = (96, 64, 144, 112)


def _texture(seed: int, size: int = 192) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur(rng.normal(128, 30, (size, size)).astype(np.float32), (0, 0), 2)
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _region(mask: np.ndarray, prompt: str = "", probability: float = 0.0):
    return to_frame(mask, mask.shape, score=0.9, prompt=prompt, probability=probability, refiner="contours")


def test_locations_are_nine_consistent_names():
    assert location_name(0.1, 0.1) == "upper left" and location_name(0.5, 0.1) == "top centre"
    assert location_name(0.5, 0.5) == "centre" and location_name(0.9, 0.5) == "centre right"
    assert location_name(0.5, 0.99) == "bottom centre" and location_name(1.0, 1.0) == "lower right"


def test_shape_tells_a_line_from_a_blob():
    line, blob = np.zeros((100, 100), bool), np.zeros((100, 100), bool)
    cv2.line(line.view(np.uint8), (10, 20), (80, 70), 1, 2)
    cv2.circle(blob.view(np.uint8), (50, 50), 12, 1, -1)
    assert shape_of(line)[0] == "line-like" and shape_of(blob)[0] == "blob-like"


def test_rules_measure_place_tone_and_shape_against_the_references():
    refs = [_texture(s) for s in range(6)]
    frame = _texture(9)
    scratch = np.zeros(frame.shape[:2], np.uint8)
    cv2.line(scratch, (20, 30), (55, 12), 1, 3)  # upper left, bright, thin
    spot = np.zeros(frame.shape[:2], np.uint8)
    cv2.circle(spot, (150, 150), 10, 1, -1)  # lower right, dark, round
    frame[scratch > 0], frame[spot > 0] = 240, 15
    # The detector's regions are coarser than the defects: grown masks, as a patch map gives.
    grown = [cv2.dilate(m, np.ones((15, 15), np.uint8)) > 0 for m in (scratch, spot)]
    work_map = np.zeros(frame.shape[:2], np.float32)
    work_map[grown[0]], work_map[grown[1]] = 0.9, 0.7
    stats = PixelStats.of(refs, frame.shape[:2])
    out = rule_explanation(frame, [_region(m) for m in grown], work_map, 0.6, 0.9, "metal_plate", stats)
    assert out["origin"] == "rules" and out["basis"] == "references"
    first, second = out["regions"]
    assert (first["location"], first["tone"], first["shape"]) == ("upper left", "brighter", "line-like")
    assert (second["location"], second["tone"], second["shape"]) == ("lower right", "darker", "blob-like")
    assert first["contrast_sd"] > 2 and second["contrast_sd"] < -2
    assert (
        out["text"].startswith("NG metal plate, score 0.90") and "upper left: a brighter line-like mark" in out["text"]
    )
    # Without references the part around each region is the measure, with the same answers here.
    around = rule_explanation(frame, [_region(m) for m in grown], work_map, 0.6, 0.9, "metal_plate", None)
    assert around["basis"] == "surroundings"
    assert [(e["location"], e["tone"], e["shape"]) for e in around["regions"]] == [
        (e["location"], e["tone"], e["shape"]) for e in out["regions"]
    ]


def test_regions_below_the_threshold_are_not_described_as_defects():
    frame = _texture(1)
    masks = [np.zeros(frame.shape[:2], bool) for _ in range(3)]
    masks[0][10:40, 10:40], masks[1][100:130, 10:40], masks[2][100:130, 140:170] = True, True, True
    work_map = np.zeros(frame.shape[:2], np.float32)
    work_map[masks[0]], work_map[masks[1]], work_map[masks[2]] = 0.8, 0.3, 0.2
    out = rule_explanation(frame, [_region(m) for m in masks], work_map, 0.5, 0.8, "cell", None)
    assert [e["location"] for e in out["regions"]] == ["upper left"] and "1 region." in out["text"]
    work_map[masks[0]] = 0.4  # none reaches the threshold: the strongest alone, said to be below it
    out = rule_explanation(frame, [_region(m) for m in masks], work_map, 0.5, 0.8, "cell", None)
    assert [e["location"] for e in out["regions"]] == ["upper left"] and out["regions"][0]["below_threshold"]
    assert "below the NG threshold" in out["text"]


RULES = {
    "text": "NG solar cell, score 0.81 (threshold 0.50), 1 region. upper left: a darker line-like mark, "
    "3.1 sd darker than the references, 0.42% of the frame.",
    "origin": "rules",
    "regions": [{"location": "upper left", "tone": "darker", "shape": "line-like", "area_percent": 0.42}],
}


@pytest.mark.parametrize(
    "sentence, reason",
    [
        ("A thin dark crack runs across the upper left of the cell.", ""),
        ("The upper left shows a darker line, 0.42% of the cell.", ""),
        ("Likely spot (brighter) at the upper left of the solar cell.", "calls it"),
        ("A dark crack sits in the lower right corner of the cell.", "names a place"),
        ("The cell is defective in 6 regions: upper left, dark lines.", "numbers not in the evidence"),
        ("A dark crack on the cell.", "does not say where"),
        ("Upper left dark line. Upper left dark line.", "repeats itself"),
        ("You describe inspection findings in one short sentence: upper left, dark.", "copies"),
        ("A dark line at the upper left has puzzled scientists and engineers for many years.", "does not say"),
        ("dark", "not one short sentence"),
    ],
)
def test_model_sentences_name_only_what_the_evidence_holds(sentence, reason):
    why = check_sentence(sentence, RULES, SYSTEM + " " + ASK)
    assert (why == "") if not reason else reason in why, why


def test_a_sentence_cut_by_its_token_budget_keeps_its_complete_sentences():
    assert first_sentences("A dark line at the upper left. It runs") == "A dark line at the upper left."
    assert first_sentences("A dark line at the upper") == ""


def test_every_ng_line_of_detect_carries_its_rule_explanation(controlled, tmp_path):
    from runtime.detect.__main__ import main as detect_main

    for folder, boxes in (("refs", [None] * 3), ("in", [None, DEFECT])):
        (tmp_path / folder).mkdir()
        for i, box in enumerate(boxes):
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), part(red_box=box))
    argv = ["--bundle", str(controlled), "--category", CATEGORY, "--references", str(tmp_path / "refs")]
    argv += ["--map-weight", "1.0", "--text-cache-dir", str(tmp_path / "text"), "--out", str(tmp_path / "out")]
    assert detect_main([str(tmp_path / "in"), *argv]) == 0
    ok, ng = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert ok["label"] == "OK" and "explanation" not in ok  # only NG lines explain themselves
    assert ng["label"] == "NG" and ng["explanation"]["origin"] == "rules" and ng["explanation"]["basis"] == "references"
    region = ng["explanation"]["regions"][0]
    assert (region["location"], region["tone"], region["shape"]) == ("centre", "darker", "blob-like")
    assert region["prompt"] == "a photo of a widget with a scratch" and region["prompt_probability"] > 0.9
    assert "explanation" in ng["timings_ms"] and "centre: a darker blob-like mark" in ng["explanation"]["text"]


@pytest.fixture(scope="module")
def smollm2(tiny_bundle, tmp_path_factory) -> LanguageModel:
    out = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("smol") / "b"))
    build_bundle(out, "tiny", mllm=MllmSpec(packaged=True))
    return LanguageModel(Detector.from_bundle(out).bundle, threads=2)


@pytest.fixture
def mosquitto(tmp_path):
    """A real broker on a free port, for this test only."""
    with Broker(tmp_path) as broker:
        yield broker.port


def test_serve_explains_every_ng_frame_in_its_line_and_sends_the_models_word_everywhere(
    controlled, smollm2, tmp_path, mosquitto
):
    import paho.mqtt.client as mqtt

    from runtime.serve import Server
    from tests.serving import result_lines, serve_settings, wait_for

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        cv2.imwrite(str(frames / f"{i:02d}.png"), part(red_box=DEFECT if i % 3 == 2 else None))
    heard = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: heard.append((m.topic, json.loads(m.payload)))
    sub.connect("127.0.0.1", mosquitto)
    sub.subscribe([("plant/+/+/explanation", 1)])  # PREFIX/LINE/CAMERA/explanation
    sub.loop_start()
    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    settings = serve_settings(
        controlled,
        frames,
        tmp_path,
        explain=True,  # serve_settings turns it off
        sink=(f"jsonl:{tmp_path / 'sink.jsonl'}", f"mqtt://127.0.0.1:{mosquitto}/plant"),
        save_ng=tmp_path / "ng",
        explain_seconds=20.0,
    )
    server = Server(settings, detector=detector, agent=PromptAgent(detector, smollm2)).start()
    try:
        server.wait()
        wait_for(lambda: sum(x["label"] == "EXPLANATION" for x in result_lines(server)) >= 2, 60, "2 explanations")
        page = {r["frame_id"]: r for r in server.state.since(0)}
    finally:
        server.shutdown()
        time.sleep(0.5)
        sub.loop_stop()
    lines = result_lines(server)
    ng = {x["frame_id"]: x for x in lines if x["label"] == "NG"}
    assert len(ng) == 2 and all(x["explanation"]["origin"] == "rules" and x["explanation"]["text"] for x in ng.values())
    explained = [x for x in lines if x["label"] == "EXPLANATION"]
    assert sorted(x["frame_id"] for x in explained) == sorted(ng)  # one final word per NG frame
    sent = [json.loads(x) for x in (tmp_path / "sink.jsonl").read_text().splitlines()]
    assert [x for x in sent if x["label"] == "EXPLANATION"] == explained  # every sink gets them as logged
    assert sorted(x["frame_id"] for _, x in heard) == sorted(ng) and all(t.endswith("/explanation") for t, _ in heard)
    assert {x["frame_id"]: x["explanation"] for _, x in heard} == {x["frame_id"]: x["explanation"] for x in explained}
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "ng").glob("*.json")]
    assert {x["frame_id"]: x["explanation"] for x in sidecars} == {x["frame_id"]: x["explanation"] for x in explained}
    for x in explained:
        e = x["explanation"]
        assert e["origin"] in ("rules", smollm2.name) and e["latency_s"] > 0 and e["tokens"] > 0
        assert (e["origin"] == "rules") == ("model_rejected" in e)  # a refused sentence says why
        assert page[x["frame_id"]]["explanation"] == e  # the page shows the final word and its origin
    print({x["frame_id"]: (x["explanation"]["origin"], x["explanation"]["text"]) for x in explained})


def test_no_ng_frame_is_left_without_a_word_when_the_queue_is_full_or_serve_stops(controlled, tmp_path):
    """Frames the explainer cannot take (queue full) or never reaches (serve stopped) get an EXPLANATION
    line with origin skipped and the reason, in the log and at every sink; the page keeps the rules."""
    from runtime.serve.frames.sources import Frame
    from runtime.serve.interfaces.metrics import Metrics
    from runtime.serve.judging.explainer import Explainer
    from runtime.serve.judging.state import State
    from runtime.serve.results.records import ResultsLog, record_of
    from runtime.serve.results.sinks import JsonlSink

    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    image = part(red_box=DEFECT)
    result = detector.detect(image, CATEGORY)
    metrics, state, log = Metrics(), State(10), ResultsLog(tmp_path / "results.jsonl")
    sink = JsonlSink(tmp_path / "sink.jsonl", metrics, 16)
    sink.start()
    explainer = Explainer(PromptAgent(detector, None), log, state, metrics, 1, 5.0, sinks=[sink])  # never started
    frames = [Frame(i, 1000.0 + i, image, "test") for i in (1, 2, 3)]
    for frame in frames:
        record = record_of(frame, result, "run-1")
        log.write(record)
        state.publish(record, image, result)
        explainer.offer(frame, result, None, "run-1")
    explainer.close()
    sink.close()
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    said = {x["frame_id"]: x["explanation"] for x in lines if x["label"] == "EXPLANATION"}
    assert sorted(said) == [1, 2, 3] and all(e["origin"] == "skipped" and not e["text"] for e in said.values())
    assert "explain_queue" in said[2]["reason"] and "explain_queue" in said[3]["reason"]
    assert "serve stopped" in said[1]["reason"]
    sent = [json.loads(x) for x in (tmp_path / "sink.jsonl").read_text().splitlines()]
    assert {x["frame_id"]: x["explanation"] for x in sent} == said
    assert metrics.registry.get_sample_value("lineside_explanations_skipped_total") == 3
    assert all(r["explanation"]["origin"] == "rules" for r in state.since(0))  # the rules stay on the page


def test_a_memory_built_from_encodings_is_measured_against_its_images_once_they_are_handed_in(controlled, tmp_path):
    """Serve's teaching builds its memory from encodings; without the images the rules fall back on the part
    around each region, with them (remember_pixels) on the references, as for any other memory."""
    from runtime.detect.references import ReferenceMemory, content_key

    detector = Detector.from_bundle(controlled, map_weight=1.0, text_cache_dir=tmp_path / "text")
    refs = [cv2.cvtColor(part(), cv2.COLOR_BGR2RGB) for _ in range(3)]
    s, encoder = detector.settings, detector.encoder
    shape = (s.coreset_ratio, s.nn_index, s.reference_window, encoder.grid)
    memory = ReferenceMemory.from_encoded(
        content_key(refs), encoder.identity, [encoder.encode(r) for r in refs], *shape
    )
    frame = part(red_box=DEFECT)
    assert detector.detect(frame, CATEGORY, memory).explanation["basis"] == "surroundings"
    detector.remember_pixels(refs, colour="RGB")
    assert detector.detect(frame, CATEGORY, memory).explanation["basis"] == "references"
