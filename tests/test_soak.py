"""A short soak: every fault of the benchmark injected (source drops, corrupt frames, a webhook
outage, a real mosquitto killed and restarted, a slow explainer), every captured frame accounted
for, no MQTT record lost at QoS 1, no thread crashed. The 10,000-frame run is the benchmark
(python -m benchmarks.soak; its report is in benchmarks/reports/soak/)."""

from benchmarks.soak import soak


def test_short_soak_accounts_for_every_frame_and_record(tiny_bundle, tmp_path):
    figures = soak(tiny_bundle, frames=200, out=tmp_path, max_fps=25.0, broker_down_s=2.0, llm_delay_s=0.5)
    criteria = figures["criteria"]
    assert figures["lost"] == 0 and figures["duplicate_frame_lines"] == 0, figures
    assert figures["crashes"] == [] and figures["server_failure"] == [], figures
    assert figures["captured"] >= 150 and figures["result_lines"] >= 20, figures
    faults = figures["faults"]
    assert faults["reconnects"] >= faults["source_drops_injected"] >= 5
    assert all(n >= 1 for n in faults["corrupt_frames_injected"].values()), faults
    assert figures["labels"]["ERROR"] >= sum(faults["corrupt_frames_injected"].values()) - figures["dropped_stale"]
    # the broker restart path ran: killed once, started again, records published while it was away arrived
    restart = faults["broker_restart"]
    assert restart["kills"] == 1 and restart["starts"] == 2, restart
    assert restart["records_during_outage"] > 0, restart
    assert criteria["0 MQTT records lost across the broker restart (QoS 1)"]["pass"], figures["sinks"]
    assert figures["sinks"]["mqtt"]["delivered"] == figures["sinks"]["mqtt"]["written"] > 0, figures["sinks"]
    # the webhook peer went away while records came; re-sends with backoff deliver them or count them failed
    assert faults["webhook_outage"]["records_during"] > 0, faults["webhook_outage"]
    assert figures["sinks"]["webhook"]["lost"] == 0, figures["sinks"]
    assert figures["explanations"]["explanation_lines"] >= 1, figures["explanations"]
    assert figures["rss"]["samples_taken"] > 10
