"""Where the graphs run: onnxruntime providers on this box, or one Triton Inference Server.

    providers = ("cuda", "cpu")                            # sessions here, in this order
    providers = ("triton://gpu-server:8001",)              # every graph on that server (gRPC)
    providers = ("triton://127.0.0.1:8000?protocol=http&timeout=5",)

Named once here so that the settings (which refuse a bad value at start) and the bundle's
sessions (which open what was named) read the same grammar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

LOCAL = ("tensorrt", "cuda", "cpu")  # onnxruntime's, in the order they are tried
SCHEME = "triton"
PROTOCOLS = {"grpc": 8001, "http": 8000}  # protocol -> Triton's default port for it
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 600.0
FORM = "triton://HOST:PORT[?protocol=grpc|http&timeout=SECONDS]"


@dataclass(frozen=True)
class TritonEndpoint:
    """A Triton server as a provider names it: where it listens, how to speak to it, how long to wait."""

    host: str
    port: int
    protocol: str = "grpc"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def address(self) -> str:
        """host:port as tritonclient takes it (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        timeout = "" if self.timeout_s == DEFAULT_TIMEOUT_S else f"&timeout={self.timeout_s:g}"
        return f"{SCHEME}://{self.address}?protocol={self.protocol}{timeout}"


def is_triton(provider: str) -> bool:
    return isinstance(provider, str) and provider.lower().startswith(f"{SCHEME}://")


def parse_triton(text: str) -> TritonEndpoint:
    """triton://HOST:PORT[?protocol=grpc|http&timeout=SECONDS] -> TritonEndpoint; ValueError naming the fault."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:  # a port out of range or not a number
        raise ValueError(f"{text!r}: {e}; the form is {FORM}") from None
    if parts.scheme.lower() != SCHEME or not parts.hostname:
        raise ValueError(f"{text!r} names no server; the form is {FORM}")
    if parts.path not in ("", "/") or parts.fragment or parts.username:
        raise ValueError(f"{text!r}: only a host, a port and the query are read; the form is {FORM}")
    query = parse_qs(parts.query, keep_blank_values=True)
    if unknown := sorted(set(query) - {"protocol", "timeout"}):
        raise ValueError(f"{text!r}: unknown option {unknown[0]!r}; the form is {FORM}")
    protocol = query.get("protocol", ["grpc"])[-1].lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"{text!r}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    timeout = _timeout(text, query.get("timeout", [str(DEFAULT_TIMEOUT_S)])[-1])
    return TritonEndpoint(parts.hostname, port or PROTOCOLS[protocol], protocol, timeout)


def _timeout(text: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise ValueError(f"{text!r}: timeout {value!r} must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    return seconds


def triton_endpoint(providers: Sequence[str]) -> TritonEndpoint | None:
    """The Triton server the providers name, or None when they are onnxruntime's."""
    return parse_triton(providers[0]) if providers and is_triton(providers[0]) else None


def check_providers(providers: Sequence[str]) -> None:
    """ValueError (one line, without the setting's name) unless `providers` is onnxruntime's providers in
    order or one Triton server alone: a graph on the server has no local fallback to fall to."""
    if not providers:
        raise ValueError("empty; give at least cpu")
    for provider in providers:
        if is_triton(provider):
            parse_triton(provider)
        elif provider not in LOCAL:
            raise ValueError(f"{provider!r} is not one of {', '.join(LOCAL)}, nor a Triton server ({FORM})")
    if len(providers) > 1 and any(is_triton(p) for p in providers):
        raise ValueError(
            f"{', '.join(providers)}: a Triton server is the only provider when given (every graph runs there)"
        )
