"""--providers triton://HOST:PORT: the grammar, the settings' refusals, and a server that is not there
or never answers, refused at start in one line (the loopback tests with a real tritonserver are in
test_triton_server.py)."""

import socket
import time

import pytest

from runtime.detect.detector import Detector
from runtime.options import load
from runtime.providers import TritonEndpoint, check_providers, parse_triton, triton_endpoint
from tests.brokers import free_port


@pytest.mark.parametrize(
    "text, endpoint",
    [
        ("triton://gpu-server", TritonEndpoint("gpu-server", 8001, "grpc", 10.0)),
        ("triton://gpu-server?protocol=http", TritonEndpoint("gpu-server", 8000, "http", 10.0)),
        ("triton://10.0.0.5:9001?protocol=grpc&timeout=2.5", TritonEndpoint("10.0.0.5", 9001, "grpc", 2.5)),
        ("TRITON://[::1]:8000?protocol=HTTP", TritonEndpoint("::1", 8000, "http", 10.0)),
    ],
)
def test_a_triton_provider_names_host_port_protocol_and_timeout(text, endpoint):
    assert parse_triton(text) == endpoint
    assert triton_endpoint((text,)) == endpoint
    assert parse_triton(str(endpoint)) == endpoint  # what result lines name it by reads back the same


@pytest.mark.parametrize(
    "text, message",
    [
        ("triton://", "names no server"),
        ("triton://h:99999", "out of range"),
        ("triton://h:8001?protocol=rest", "protocol 'rest' is not one of grpc, http"),
        ("triton://h:8001?timeout=0", "timeout '0' must be a number of seconds"),
        ("triton://h:8001?timeout=nan", "timeout 'nan'"),
        ("triton://h:8001?model=x", "unknown option 'model'"),
        ("triton://h:8001/v2/models", "only a host, a port and the query"),
    ],
)
def test_a_bad_triton_provider_is_refused_naming_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        check_providers((text,))


def test_the_settings_take_a_server_alone_and_refuse_local_buffers_with_it():
    settings = load(environ={"LINESIDE_PROVIDERS": "triton://127.0.0.1:8001"})
    assert settings.detector.providers == ("triton://127.0.0.1:8001",)
    with pytest.raises(ValueError, match="^setting providers: .*the only provider"):
        load(environ={"LINESIDE_PROVIDERS": "triton://127.0.0.1:8001,cpu"})
    with pytest.raises(ValueError, match="^setting providers: 'gpu' is not one of tensorrt, cuda, cpu, nor a Triton"):
        load(environ={"LINESIDE_PROVIDERS": "gpu"})
    with pytest.raises(ValueError, match="io_binding/cuda_graph"):
        load(environ={"LINESIDE_PROVIDERS": "triton://127.0.0.1:8001", "LINESIDE_IO_BINDING": "true"})


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_server_there_is_refused_at_start_in_one_line(tiny_bundle, tmp_path, protocol):
    url = f"triton://127.0.0.1:{free_port()}?protocol={protocol}&timeout=2"
    with pytest.raises(RuntimeError, match=r"^Triton server .* cannot be reached \(.*refused.*\); start it") as e:
        Detector.from_bundle(tiny_bundle, providers=(url,), text_cache_dir=tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_never_answers_is_refused_after_the_timeout(tiny_bundle, tmp_path, protocol):
    """A listener that accepts connections and says nothing (a hung server): the timeout bounds the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"triton://127.0.0.1:{silent.getsockname()[1]}?protocol={protocol}&timeout=0.5"
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"cannot be reached \(.*(Deadline|timed out)"):
            Detector.from_bundle(tiny_bundle, providers=(url,), text_cache_dir=tmp_path)
        assert time.monotonic() - started < 5
