"""A short soak: faults injected, every captured frame accounted for, no thread crashed."""

from benchmarks.soak import soak


def test_short_soak_accounts_for_every_frame(tiny_bundle, tmp_path):
    figures = soak(tiny_bundle, frames=60, out=tmp_path)
    assert figures["accounted"], figures
    assert figures["crashes"] == []
    assert figures["captured"] >= 50 and figures["result_lines"] >= 5
    assert figures["reconnects"] >= figures["source_drops_injected"] >= 1
