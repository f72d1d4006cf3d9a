"""The detector through a real tritonserver on 127.0.0.1 (benchmarks/tritonserver.py): results equal to
local sessions over gRPC and HTTP, concurrent requests batched by the server (its statistics say so),
a repository of another bundle or other shapes refused at start, ERROR while the server is stopped or
hung, and OK again once it is back."""

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from benchmarks.tritonserver import TritonServer, python_twin
from runtime.bundle.loader import Bundle
from runtime.bundle.triton_repo import RepoOptions, write_repository
from runtime.bundle.triton_session import BACKOFF_FIRST_S, TritonMismatch
from runtime.detect.detector import Detector
from runtime.serve.interfaces.web import graph_lines

QUEUE_DELAY_US = 100_000  # long enough that four requests sent together wait for each other


@pytest.fixture(scope="module")
def patch_bundle(tmp_path_factory) -> Path:
    """The offline default's patch encoder (its graph batches), small: 128 px, fp32."""
    from export.build import build_bundle
    from export.patch_encoder import PatchSpec

    out = tmp_path_factory.mktemp("patch") / "bundle"
    build_bundle(out, "default", patch=PatchSpec(image_size=128, precisions=("fp32",)))
    return out


@pytest.fixture(scope="module")
def tampered_bundle(patch_bundle, tmp_path_factory) -> Path:
    """The patch bundle under another component name, whose repository will state other input dims."""
    out = Path(shutil.copytree(patch_bundle, tmp_path_factory.mktemp("tampered") / "bundle"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["components"] = {"patch_tampered": manifest["components"]["patch_encoder"]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _exported(bundle: Path, repo: Path, **options) -> Path:
    write_repository(Bundle.open(bundle), repo, RepoOptions(**options), precisions=["fp32"])
    return repo


@pytest.fixture(scope="module")
def server(tiny_bundle, patch_bundle, tampered_bundle, tmp_path_factory):
    """One tritonserver over three repositories: the tiny bundle's, the patch bundle's (a long queue
    delay), and the tampered one's with its input dims edited after export."""
    base = tmp_path_factory.mktemp("triton")
    repos = [
        _exported(tiny_bundle, base / "tiny"),
        _exported(patch_bundle, base / "patch", max_batch_size=8, queue_delay_us=QUEUE_DELAY_US),
        _exported(tampered_bundle, base / "tampered"),
    ]
    config = repos[2] / "patch_tampered_fp32" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 3, 128, 128 ]", "dims: [ 3, 96, 96 ]"))
    twins = [python_twin(repo, base / f"twin-{repo.name}") for repo in repos]
    triton = TritonServer(twins, base / "server")
    triton.start()
    yield triton
    triton.stop()


def _frames(n: int, side: int = 96, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def _same(local, remote) -> None:
    assert remote.label == local.label and remote.error is None
    assert remote.image_score == pytest.approx(local.image_score, abs=1e-5)
    assert np.abs(remote.anomaly_map - local.anomaly_map).max() < 1e-4
    assert [r.bbox for r in remote.regions] == [r.bbox for r in local.regions]
    assert remote.bundle_id == local.bundle_id and remote.precisions == local.precisions


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_graph_on_the_server_gives_the_local_results(server, tiny_bundle, tmp_path, protocol):
    """CLIP's image and text graphs and SAM's two (sam_gate 0: SAM on every frame) through the server."""
    options = {"sam_gate": 0.0, "text_cache_dir": tmp_path}
    local = Detector.from_bundle(tiny_bundle, **options)
    remote = Detector.from_bundle(tiny_bundle, providers=(server.url(protocol),), **options)
    assert remote.providers == (server.url(protocol),)
    assert {g["providers"][0] for g in remote.graphs().values()} == {server.url(protocol)}
    for frame in _frames(2):
        _same(local.detect(frame, "part"), remote.detect(frame, "part"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_few_shot_patch_encoder_on_the_server_gives_the_local_results(server, patch_bundle, tmp_path, protocol):
    references, frames = _frames(3, seed=1), _frames(2, seed=2)
    local = Detector.from_bundle(patch_bundle, text_cache_dir=tmp_path)
    remote = Detector.from_bundle(patch_bundle, providers=(server.url(protocol),), text_cache_dir=tmp_path)
    for frame in frames:
        _same(local.detect(frame, "cell", references), remote.detect(frame, "cell", references))


def _batches(server) -> dict[int, int]:
    """batch size -> how many times the server ran the patch encoder at that size (its own statistics)."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    stats = client.get_inference_statistics("patch_encoder_fp32", as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}


def test_concurrent_requests_from_several_threads_are_batched_by_the_server(server, patch_bundle):
    """Four cameras' inspectors sending at once through one session: the dynamic batcher runs them together."""
    session = Bundle.open(patch_bundle).session("patch_encoder", "fp32", (server.url("grpc"),))
    pixels = np.random.default_rng(3).random((1, 3, 128, 128), dtype=np.float32)
    before, answers, go = _batches(server), [], threading.Barrier(4)

    def camera():
        go.wait()
        answers.append(session.run({"pixels": pixels})["patch_tokens"])

    threads = [threading.Thread(target=camera) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 4 and all(np.array_equal(a, answers[0]) for a in answers)
    after = _batches(server)
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in grown.items()) == 4  # every request ran once
    assert max(size for size, n in grown.items() if n) > 1, f"no batch of more than one request: {grown}"


def _grown(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: n - before.get(size, 0) for size, n in after.items() if n - before.get(size, 0)}


def test_detect_batch_sends_its_frames_at_once_and_the_server_batches_them(server, patch_bundle, tmp_path):
    references, frames = _frames(3, seed=6), _frames(4, seed=7)
    local = Detector.from_bundle(patch_bundle, text_cache_dir=tmp_path)
    remote = Detector.from_bundle(patch_bundle, providers=(server.url("grpc"),), text_cache_dir=tmp_path)
    memory = remote.remember(references)  # the references' own requests, before counting
    before = _batches(server)
    results = remote.detect_batch(frames, "cell", memory)
    grown = _grown(before, _batches(server))
    assert sum(size * n for size, n in grown.items()) == 4 and max(grown) > 1, grown
    for frame, result in zip(frames, results):  # in the frames' order
        _same(local.detect(frame, "cell", references), result)
    assert local.concurrency == 1 and remote.concurrency > 1


def test_the_batch_command_through_the_server(server, patch_bundle, tmp_path):
    """python -m runtime.detect with --providers triton://: one line per file, unreadable ones ERROR in place."""
    import cv2

    from runtime.detect.__main__ import main as detect_main

    (tmp_path / "refs").mkdir()
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_frames(2, seed=8)):
        cv2.imwrite(str(tmp_path / "refs" / f"{i}.png"), image)
    for i, image in enumerate(_frames(5, seed=9)):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), image)
    (tmp_path / "in" / "2.png").write_bytes(b"not a png")
    before = _batches(server)
    args = ["--bundle", str(patch_bundle), "--category", "cell", "--references", str(tmp_path / "refs")]
    args += ["--providers", server.url("http"), "--out", str(tmp_path / "out"), "--text-cache-dir", str(tmp_path)]
    assert detect_main([str(tmp_path / "in"), *args]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines] == [f"{i}.png" for i in range(5)]
    assert [x["label"] == "ERROR" for x in lines] == [False, False, True, False, False]
    assert lines[0]["providers"] == [server.url("http")]
    grown = _grown(before, _batches(server))
    assert sum(size * n for size, n in grown.items()) == 2 + 4 and max(grown) > 1, grown  # references, then frames


def test_a_multi_camera_serve_sends_its_cameras_frames_together(server, patch_bundle, tmp_path):
    """Four cameras of one --cameras file, one detector on the server: their inspectors' requests overlap,
    and the server runs them as batches; /readyz names the server answering."""
    import cv2
    import yaml

    from runtime.serve import Server, Settings

    cameras, frames = [], _frames(24, seed=10)
    for i, name in enumerate("abcd"):
        folder = tmp_path / name
        folder.mkdir()
        for j, image in enumerate(frames[i * 6 : i * 6 + 6]):
            cv2.imwrite(str(folder / f"{j}.png"), image)
        cameras.append({"id": name, "source": str(folder)})
    (tmp_path / "refs").mkdir()
    for j, image in enumerate(_frames(2, seed=11)):
        cv2.imwrite(str(tmp_path / "refs" / f"{j}.png"), image)
    (tmp_path / "cameras.yaml").write_text(yaml.safe_dump({"cameras": cameras}))
    settings = Settings.of(
        cameras=tmp_path / "cameras.yaml",
        bundle=patch_bundle,
        category="cell",
        references=tmp_path / "refs",
        providers=(server.url("grpc"),),
        port=0,
        explain=False,
        results=tmp_path / "results.jsonl",
        text_cache_dir=tmp_path / "text",
    )
    before = _batches(server)
    serve = Server(settings).start()
    try:
        try:  # 200 or 503 (a camera between frames), the graph lines either way
            readyz = urllib.request.urlopen(f"http://127.0.0.1:{serve.web.port}/readyz", timeout=5).read().decode()
        except urllib.error.HTTPError as e:
            readyz = e.read().decode()
        serve.wait()
    finally:
        serve.shutdown()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(x["camera"] for x in lines) == sorted("abcd" * 6) and {x["label"] for x in lines} <= {"OK", "NG"}
    assert f"on {server.url('grpc')}" in readyz and "server answering" in readyz
    grown = _grown(before, _batches(server))
    assert max(grown) > 1, f"the cameras' requests never shared a batch: {grown}"


def test_a_repository_of_another_bundle_is_refused_in_one_line(server, tiny_bundle, tmp_path):
    """The same graphs under another bundle id (a config constant changed): the server's models are not its."""
    other = Path(shutil.copytree(tiny_bundle, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["components"]["clip_image"]["config"]["logit_scale"] += 1.0
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TritonMismatch, match=r"clip_image_fp32 is of bundle [0-9a-f]{16}, this bundle is") as e:
        Detector.from_bundle(other, providers=(server.url("grpc"),), text_cache_dir=tmp_path)
    assert "\n" not in str(e.value) and Bundle.open(other).bundle_id in str(e.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_model_whose_shapes_differ_from_the_manifest_is_refused(server, tampered_bundle, tmp_path, protocol):
    with pytest.raises(TritonMismatch, match=r"input pixels is FP32 \[-1, 3, 96, 96\] on the server, .* \[-1, 3, 128"):
        Detector.from_bundle(tampered_bundle, providers=(server.url(protocol),), text_cache_dir=tmp_path)


def test_a_hung_or_stopped_server_gives_error_results_then_ok_once_it_is_back(patch_bundle, tmp_path):
    """Its own server, stopped and started by PID: a hung server (SIGSTOP) times out, a stopped one refuses;
    both frames are ERROR naming the server, and the first frame after the backoff reconnects."""
    twin = python_twin(_exported(patch_bundle, tmp_path / "repo"), tmp_path / "twin")
    triton = TritonServer([twin], tmp_path / "server")
    triton.start()
    try:
        url = triton.url("grpc", timeout=1.0)
        detector = Detector.from_bundle(patch_bundle, providers=(url,), text_cache_dir=tmp_path)
        references, (frame,) = detector.remember(_frames(2, seed=4)), _frames(1, seed=5)
        ok = detector.detect(frame, "cell", references)
        assert ok.label in ("OK", "NG") and ok.error is None

        os.kill(triton.proc.pid, signal.SIGSTOP)  # hung: accepts nothing, answers nothing
        started = time.monotonic()
        hung = detector.detect(frame, "cell", references)
        os.kill(triton.proc.pid, signal.SIGCONT)
        assert hung.label == "ERROR" and "patch_encoder_fp32" in hung.error and "Deadline" in hung.error
        assert time.monotonic() - started < 5  # the timeout bounds it

        triton.stop()
        time.sleep(BACKOFF_FIRST_S * 2 + 0.2)  # past the backoff: this frame tries the server
        gone = detector.detect(frame, "cell", references)
        assert gone.label == "ERROR" and "failed" in gone.error and url in gone.error
        waiting = detector.detect(frame, "cell", references)  # inside the backoff: not even tried
        assert waiting.label == "ERROR" and "not tried" in waiting.error
        state = detector.graphs()["patch_encoder"]["server"]  # what /readyz and /api/status show
        assert state["state"] == "failing" and state["url"] == url and state["retry_in_s"] > 0
        assert ", server failing: " in graph_lines(detector.graphs())

        triton.start()
        deadline = time.monotonic() + 40
        while (back := detector.detect(frame, "cell", references)).label == "ERROR" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert back.label == ok.label and back.image_score == pytest.approx(ok.image_score, abs=1e-6)
        assert detector.graphs()["patch_encoder"]["server"]["state"] == "answering"
    finally:
        triton.stop()
