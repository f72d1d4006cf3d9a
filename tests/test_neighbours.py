"""The reference memory's coreset, searches and disk cache, on small arrays and a stand-in encoder."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.detect import neighbours, reference_cache
from runtime.detect.neighbours import NumpySearch, coreset_indices, index_kind, local_max_similarity, searcher
from runtime.detect.references import ReferenceMemory
from runtime.detect.scoring import calibrated, l2_normalize, nearest_distance


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


class CountingEncoder:
    """ImageEncoder's interface: a 4 x 4 grid of patch tokens from the image's pixels, counting its calls."""

    grid, identity = (4, 4), "stand-in fp32 0000"

    def __init__(self):
        self.calls = 0

    def encode(self, rgb):
        self.calls += 1
        small = rgb[:64:4, :64:4].reshape(16, -1)[:, :8].astype(np.float32) + 1.0  # (16, 8)
        tokens = l2_normalize(small + np.arange(8, dtype=np.float32))
        return l2_normalize(tokens.mean(axis=0)), [tokens]


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_coreset_keeps_all_at_ratio_one_and_the_asked_fraction_otherwise():
    bank = unit_rows(100)
    assert np.array_equal(coreset_indices(bank, 1.0), np.arange(100))
    keep = coreset_indices(bank, 0.1)
    assert len(keep) == 10 and len(set(keep.tolist())) == 10 and np.all(np.diff(keep) > 0)
    assert np.array_equal(keep, coreset_indices(bank, 0.1))  # deterministic
    with pytest.raises(ValueError, match="coreset ratio"):
        coreset_indices(bank, 0.0)


def test_greedy_k_center_picks_one_row_per_cluster():
    """Three tight clusters, three picks: greedy k-center covers each, where a random pick would not."""
    centres = unit_rows(3, d=32, seed=1)
    rng = np.random.default_rng(2)
    noise = 0.01 * rng.standard_normal((225, 32)).astype(np.float32)
    bank = l2_normalize(np.repeat(centres, [200, 20, 5], axis=0) + noise)
    keep = coreset_indices(bank, 3 / 225)
    assert sorted({int(i) // 200 if i < 200 else 1 + int(i >= 220) for i in keep}) == [0, 1, 2]
    # every row has a kept row within the cluster radius
    assert nearest_distance(bank, bank[keep]).max() < 0.01


def test_coreset_of_wide_rows_works_in_a_projection():
    bank = unit_rows(300, d=neighbours.PROJECTION_DIM * 2)
    keep = coreset_indices(bank, 0.2)
    assert len(keep) == 60


def test_blocked_numpy_search_is_exact_across_blocks(monkeypatch):
    bank, tokens = unit_rows(1000, seed=3), unit_rows(37, seed=4)
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 37 * 64)  # 64 bank rows per block: 16 blocks
    exact = (tokens @ bank.T).max(axis=1)
    np.testing.assert_allclose(NumpySearch(bank).max_similarity(tokens), exact, atol=1e-6)


def test_faiss_index_is_exact_on_the_farthest_tokens_and_survives_bytes():
    pytest.importorskip("faiss")
    bank, tokens = unit_rows(5000, seed=5), unit_rows(200, seed=6)
    exact = NumpySearch(bank).max_similarity(tokens)
    search = searcher(bank, "faiss")
    found = search.max_similarity(tokens)
    assert np.all(found <= exact + 1e-5)  # a graph search can only miss the nearest row, never beat it
    assert found.min() == pytest.approx(exact.min(), abs=1e-6)  # the token that sets the score
    again = searcher(bank, "faiss", search.to_bytes())
    np.testing.assert_allclose(again.max_similarity(tokens), found, atol=1e-6)


def test_a_coreset_search_is_exact_on_the_farthest_tokens():
    """Normal patches in clusters, a frame of normal patches and five odd ones: the odd ones are searched exactly."""
    rng = np.random.default_rng(8)
    centres = unit_rows(40, seed=9)
    bank = l2_normalize(np.repeat(centres, 50, axis=0) + 0.15 * rng.standard_normal((2000, 16)).astype(np.float32))
    normal = l2_normalize(centres[rng.integers(0, 40, 95)] + 0.15 * rng.standard_normal((95, 16)).astype(np.float32))
    tokens = np.concatenate([normal, unit_rows(5, seed=10)])  # (100, 16): the last five odd
    exact = NumpySearch(bank).max_similarity(tokens)
    keep = coreset_indices(bank, 0.1)
    refined = searcher(bank[keep], "numpy", complete=bank)
    found = refined.max_similarity(tokens)
    assert np.all(found <= exact + 1e-6) and refined.name == "numpy"
    assert found.min() == pytest.approx(exact.min(), abs=1e-6)  # the farthest token: exact
    np.testing.assert_allclose(np.sort(found[95:])[:3], np.sort(exact[95:])[:3], atol=1e-6)
    assert NumpySearch(bank[keep]).max_similarity(tokens).min() < exact.min() - 0.01  # the coreset alone: not


def test_index_choice(monkeypatch):
    assert index_kind("numpy", 10**6) == "numpy"
    assert index_kind("auto", 10) == "numpy"  # small banks: numpy is as fast
    monkeypatch.setattr(neighbours, "has_faiss", lambda: False)
    assert index_kind("auto", 10**6) == "numpy"
    with pytest.raises(RuntimeError, match=r"lineside\[fast\]"):
        index_kind("faiss", 10)
    with pytest.raises(ValueError, match="not one of"):
        index_kind("annoy", 10)


def test_memory_at_ratio_one_scores_as_the_exact_search():
    encoder, refs = CountingEncoder(), images(3)
    memory = ReferenceMemory.build(encoder, refs)
    frame = images(1, seed=9)[0]
    global_emb, taps = encoder.encode(frame)
    grid, _ = memory.score(global_emb, taps, encoder.grid)
    bank = np.concatenate([encoder.encode(r)[1][0] for r in refs])
    expected = calibrated(nearest_distance(taps[0], bank), memory.spread).reshape(4, 4)
    np.testing.assert_allclose(grid, expected, atol=1e-6)
    assert memory.taps[0].shape == (48, 8) and memory.coreset_ratio == 1.0


def test_coreset_memory_keeps_its_fraction_and_scores_its_references_low():
    encoder, refs = CountingEncoder(), images(4)
    memory = ReferenceMemory.build(encoder, refs, coreset_ratio=0.25)
    assert memory.taps[0].shape == (16, 8) and memory.complete[0].shape == (64, 8)
    assert memory.spread == ReferenceMemory.build(encoder, refs).spread  # the exact search's scale
    grid, _ = memory.score(*encoder.encode(refs[0]), encoder.grid)
    assert np.isfinite(grid).all() and grid.shape == (4, 4)


def test_memory_is_built_once_then_read_from_the_cache(tmp_path):
    encoder, refs = CountingEncoder(), images(3)
    first = ReferenceMemory.build(encoder, refs, 0.5, "numpy", cache=tmp_path)
    assert encoder.calls == 3 and len(list(tmp_path.glob("*.npz"))) == 1
    again = ReferenceMemory.build(encoder, [r.copy() for r in refs], 0.5, "numpy", cache=tmp_path)
    assert encoder.calls == 3  # same content: nothing encoded
    assert again.key == first.key and again.spread == first.spread
    np.testing.assert_array_equal(again.taps[0], first.taps[0])
    ReferenceMemory.build(encoder, refs, 1.0, "numpy", cache=tmp_path)  # another ratio shapes another memory
    assert encoder.calls == 6 and len(list(tmp_path.glob("*.npz"))) == 2


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    encoder, refs = CountingEncoder(), images(2)
    ReferenceMemory.build(encoder, refs, cache=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a zip")
    memory = ReferenceMemory.build(encoder, refs, cache=tmp_path)
    assert encoder.calls == 4 and memory.count == 2
    assert reference_cache.load(path) is not None  # written again, whole


def test_faiss_memory_round_trips_through_the_cache(tmp_path):
    pytest.importorskip("faiss")
    encoder, refs = CountingEncoder(), images(3)
    first = ReferenceMemory.build(encoder, refs, 1.0, "faiss", cache=tmp_path)
    again = ReferenceMemory.build(encoder, refs, 1.0, "faiss", cache=tmp_path)
    assert encoder.calls == 3 and again.index == "faiss" and again.searches[0].name == "faiss"
    tokens = encoder.encode(images(1, seed=7)[0])[1][0]
    np.testing.assert_allclose(again.searches[0].max_similarity(tokens), first.searches[0].max_similarity(tokens))


def test_the_benchmark_reads_its_configurations_and_writes_ratios():
    from benchmarks.neighbours import markdown, parse_config

    assert parse_config("exact") == {"coreset_ratio": 1.0, "nn_index": "numpy"}
    assert parse_config("coreset:0.1+faiss") == {"coreset_ratio": 0.1, "nn_index": "faiss"}
    assert parse_config("window:1+top:0.01+mapw:1")["reference_window"] == 1
    with pytest.raises(ValueError, match="unknown configuration"):
        parse_config("annoy")
    row = {"reference_p90_ms": 1.0, "image_encoder_p90_ms": 1.0, "build_s": 1.0, "auroc_mono": 0.8}
    rows = [
        row | {"config": "exact", "reference_p50_ms": 100.0, "image_encoder_p50_ms": 25.0, "auroc_pooled": 0.75},
        row | {"config": "coreset:0.1", "reference_p50_ms": 20.0, "image_encoder_p50_ms": 25.0, "auroc_pooled": 0.752},
    ]
    machine = {"cpu": "a CPU", "cores": 2, "isa": ["avx2"], "onnxruntime": "1.0"}
    text = markdown({"rows": rows, "machine": machine, "shots": 16, "per_class": 40, "bundle": "b"})
    assert "| coreset:0.1 | 20.000 |" in text and "| 5.000 | 0.800 |" in text and "a CPU" in text
    assert rows[1]["d_auroc_pooled"] == pytest.approx(0.002)


def test_position_aware_search_is_the_brute_force_over_the_window():
    rng = np.random.default_rng(11)
    grid, refs = (4, 5), l2_normalize(rng.standard_normal((3, 20, 8)).astype(np.float32))
    tokens = l2_normalize(rng.standard_normal((20, 8)).astype(np.float32))
    for window in (0, 1, 2):
        expected = np.full(20, -np.inf)
        for p in range(20):
            i, j = divmod(p, 5)
            for q in range(20):
                a, b = divmod(q, 5)
                if abs(a - i) <= window and abs(b - j) <= window:
                    expected[p] = max(expected[p], float((refs[:, q] @ tokens[p]).max()))
        np.testing.assert_allclose(local_max_similarity(tokens, refs, grid, window), expected, atol=1e-6)


def test_a_patch_out_of_its_place_is_seen_only_by_the_position_aware_memory():
    """A registered part whose corner feature shows up in the middle: normal for a search anywhere, not in place."""
    encoder, refs = CountingEncoder(), images(3)
    frame = refs[0].copy()
    frame[0, 0:12] = refs[0][60, 0:12]  # the stand-in's token of grid cell (3, 3) now also at cell (0, 0)
    anywhere = ReferenceMemory.build(encoder, refs)
    in_place = ReferenceMemory.build(encoder, refs, window=1)
    assert in_place.window == 1 and in_place.taps[0].shape == (48, 8)
    global_emb, taps = encoder.encode(frame)
    far = in_place.score(global_emb, taps, encoder.grid)[0]
    near = anywhere.score(global_emb, taps, encoder.grid)[0]
    assert near[0, 0] < 1e-6 < far[0, 0] and far[0, 0] == far.max()


def test_image_score_from_the_top_of_the_map():
    from runtime.detect.scoring import image_score

    speck, blob = np.zeros((100, 100), np.float32), np.zeros((100, 100), np.float32)
    speck[50, 50] = 1.0  # one hot pixel
    blob[40:50, 40:50] = 0.8  # a defect of 100 pixels, 1% of the map
    assert image_score(0.0, speck, 1.0) > image_score(0.0, blob, 1.0)  # the maximum prefers the speck
    assert image_score(0.0, blob, 1.0, top=0.01) == pytest.approx(0.8)
    assert image_score(0.0, speck, 1.0, top=0.01) == pytest.approx(0.01)
