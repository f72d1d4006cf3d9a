"""--sink values: every one is a sink (built, never started: no peer is needed) or one ValueError line at start,
as serve's constructor reads them; never another exception, never a sink whose URL fails at its first record."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.serve.interfaces.metrics import Metrics
from runtime.serve.results.sinks import parse_sink
from tests.fuzz.invariants import clear_error

pytestmark = pytest.mark.fuzz

SCHEMES = ["jsonl:", "http://", "https://", "mqtt://", "mqtts://", "opcua-server://", "opcua-write://", "modbus://"]
PIECES = st.sampled_from(
    [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "[zz]",
        "x",
        "999.1.1.1",
        "host-",
        "a.b",
        ":",
        "::",
        ":0",
        ":1883",
        ":99999",
        ":abc",
        "@",
        "user:pw@",
        "/",
        "/plant",
        "?",
        "?verdict=ns=2;i=1",
        "#",
        "%20",
        "%",
        " ",
        "\n",
        "\x00",
        "é",
        "..",
    ]
)


@st.composite
def sink_urls(draw) -> str:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.text(max_size=80))
    tail = "".join(draw(st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=8)))
    return draw(st.sampled_from(SCHEMES)) + tail


@given(sink_urls())
def test_a_sink_url_is_a_sink_or_one_clear_line(tmp_path_factory, spec):
    if spec.startswith("jsonl:"):  # a file sink opens its path: keep it inside a folder of the test's own
        spec = f"jsonl:{tmp_path_factory.mktemp('jsonl')}/{spec[6:]}"
    try:
        sink = parse_sink(spec, Metrics(), 8)
    except (ValueError, OSError) as e:  # serve's start line for either (runtime/serve/__main__.py)
        clear_error(e)
        return
    assert sink.label and not sink.is_alive()
    if hasattr(sink, "file"):
        sink.file.close()
