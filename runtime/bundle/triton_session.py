"""One graph on a Triton Inference Server, behind the interface of `OnnxSession`: numpy in, numpy out.

    Bundle.session("patch_encoder", "fp32", ("triton://gpu-server:8001",))   # -> TritonSession

At start it proves the server serves this bundle: the model `lineside export triton` names for the
graph and precision is ready, its lineside_* parameters carry this bundle's id and the graph's sha256,
and the server's metadata lists the manifest's tensor names, datatypes and shapes; anything else is
refused in one line (a `TritonMismatch`). A request that fails or outlasts the timeout raises
RuntimeError, which the detector turns into an ERROR result; after a failure the server is left alone
for a backoff that doubles up to BACKOFF_MAX_S (requests meanwhile fail at once, naming it), and the
first request after it reconnects. tritonclient is the `triton` extra, imported only here.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from ..providers import TritonEndpoint
from .manifest import BundleError, Component, TensorSpec
from .triton_repo import DATA_TYPES, model_name

log = logging.getLogger("lineside.triton")

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
INSTALL = "pip install 'lineside[triton]' (tritonclient with gRPC and HTTP)"
REQUEST_FAULTS = ("StatusCode.INVALID_ARGUMENT", "400")  # the request was wrong, not the link: no backoff


class TritonMismatch(BundleError):
    """The server does not serve this bundle's graph as its manifest states it."""


def client_module(protocol: str):
    """tritonclient.grpc or tritonclient.http, with the line that says how to install it."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as e:
        raise RuntimeError(f"the Triton client is not installed ({e}): {INSTALL}") from e
    return module


class Backoff:
    """How long a failed link is left alone: BACKOFF_FIRST_S, doubling to BACKOFF_MAX_S, reset by a success."""

    def __init__(self):
        self.delay, self.until, self.error = 0.0, 0.0, ""
        self._lock = threading.Lock()

    def left(self) -> float:
        """Seconds before the next try (0: try now)."""
        return max(0.0, self.until - time.monotonic())

    def failed(self, error: str) -> bool:
        """Note a failure; True when the link was up until now (worth one warning)."""
        with self._lock:
            first = self.delay == 0.0
            self.delay = min(BACKOFF_MAX_S, self.delay * 2 or BACKOFF_FIRST_S)
            self.until, self.error = time.monotonic() + self.delay, error
            return first

    def succeeded(self) -> bool:
        """Note a success; True when the link was down until now."""
        with self._lock:
            was_down, self.delay, self.until, self.error = self.delay > 0.0, 0.0, 0.0, ""
            return was_down


class TritonSession:
    """Graph `component` at `precision` on the server at `endpoint`. `run` takes and returns dicts of
    numpy arrays by name, as `OnnxSession.run` does; a client per thread, so cameras' inspectors send
    their requests concurrently and the server's dynamic batcher can batch them."""

    cuda_graph = False  # the server's business

    def __init__(self, endpoint: TritonEndpoint, bundle_id: str, component: Component, precision: str):
        self.endpoint, self.bundle_id, self.component, self.precision = endpoint, bundle_id, component, precision
        self.model = model_name(component.name, precision)
        self.path = Path(component.files[precision].path)  # the graph the server runs, named in messages
        self.providers = self.requested = (str(endpoint),)
        self.input_names = tuple(t.name for t in component.inputs)
        self.output_names = tuple(t.name for t in component.outputs)
        self.backoff = Backoff()
        self._module = client_module(endpoint.protocol)
        self._local = threading.local()
        self.check()
        log.info("%s runs on %s as model %s", self.path.name, endpoint, self.model)

    # --- the start-time proof ------------------------------------------------------------

    def check(self) -> None:
        """TritonMismatch unless the server serves this graph as the manifest states it; RuntimeError
        when it cannot be reached."""
        where = f"{self.endpoint} model {self.model}"
        try:
            client = self._client()
            ready = client.is_model_ready(self.model, **self._call())
            config = self._config(client) if ready else {}
            metadata = self._metadata(client) if ready else {}
        except self._module_errors() as e:
            raise RuntimeError(
                f"Triton server {self.endpoint} cannot be reached ({one_line(e)}); start it on the repository "
                "`lineside export triton` wrote, or fix --providers"
            ) from e
        if not ready:
            raise TritonMismatch(
                f"{where} is not ready on the server (is its repository this bundle's, with {self.precision}? "
                "write it with lineside export triton --bundle BUNDLE --repo REPO)"
            )
        _check_identity(where, config, self.bundle_id, self.component.files[self.precision].sha256)
        for kind, specs in (("input", self.component.inputs), ("output", self.component.outputs)):
            _check_tensors(where, kind, specs, metadata.get(f"{kind}s") or [])

    def _config(self, client) -> dict:
        found = client.get_model_config(self.model, **self._call(as_json=True))
        return found.get("config", found)  # gRPC's JSON wraps it in {"config": ...}

    def _metadata(self, client) -> dict:
        return client.get_model_metadata(self.model, **self._call(as_json=True))

    # --- requests ------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
        """One request; RuntimeError naming the model and the server when it fails, times out, or the
        server is still inside its backoff after an earlier failure."""
        names = list(outputs or self.output_names)
        if (left := self.backoff.left()) > 0:
            raise RuntimeError(
                f"{self.model} on {self.endpoint}: not tried, the server failed ({self.backoff.error}); "
                f"next try in {left:.1f} s"
            )
        try:
            values = self._infer(feeds, names)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # tritonclient's, gRPC's and the socket's errors share no base; gevent's
            raise self._failed(e) from e  # Timeout is not even an Exception
        if self.backoff.succeeded():
            log.warning("Triton %s answers again (%s)", self.endpoint, self.model)
        return values

    def _infer(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        m = self._module
        inputs = []
        for name in self.input_names:
            value = np.ascontiguousarray(feeds[name])
            tensor = m.InferInput(name, list(value.shape), _datatype(value))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        requested = [m.InferRequestedOutput(n) for n in names]
        result = self._client().infer(self.model, inputs, outputs=requested, **self._call(infer=True))
        return {n: result.as_numpy(n) for n in names}

    def _failed(self, error: Exception) -> RuntimeError:
        text = one_line(error)
        status = getattr(error, "status", lambda: None)()
        if str(status) not in REQUEST_FAULTS:  # the link or the server: reconnect after the backoff
            self._local.client = None
            if self.backoff.failed(text):
                log.warning(
                    "Triton %s failed (%s: %s); requests fail as ERROR, retried with a backoff up to %.0f s",
                    self.endpoint,
                    self.model,
                    text,
                    BACKOFF_MAX_S,
                )
        return RuntimeError(f"{self.model} on {self.endpoint} failed: {text}")

    def server_state(self) -> dict:
        """What readiness and the status page show of the server: answering, or failing (why, next try)."""
        if self.backoff.delay == 0.0:
            return {"url": str(self.endpoint), "model": self.model, "state": "answering"}
        return {
            "url": str(self.endpoint),
            "model": self.model,
            "state": "failing",
            "error": self.backoff.error,
            "retry_in_s": round(self.backoff.left(), 1),
        }

    # --- the client ----------------------------------------------------------------------

    def _client(self):
        """This thread's client (geventhttpclient's HTTP client must not be shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            timeout = self.endpoint.timeout_s
            if self.endpoint.protocol == "grpc":
                client = self._module.InferenceServerClient(url=self.endpoint.address)
            else:
                client = self._module.InferenceServerClient(
                    url=self.endpoint.address, connection_timeout=timeout, network_timeout=timeout
                )
            self._local.client = client
        return client

    def _call(self, as_json: bool = False, infer: bool = False) -> dict:
        """Per-call keywords: gRPC takes its deadline (and JSON answers) per call; HTTP has them already."""
        if self.endpoint.protocol != "grpc":
            return {}
        return {"client_timeout": self.endpoint.timeout_s} | ({"as_json": True} if as_json and not infer else {})

    def _module_errors(self) -> tuple[type[BaseException], ...]:
        from tritonclient.utils import InferenceServerException

        return (InferenceServerException, OSError, TimeoutError)


def _datatype(value: np.ndarray) -> str:
    for dtype, (_, datatype) in DATA_TYPES.items():
        if value.dtype == np.dtype(dtype):
            return datatype
    raise ValueError(f"no Triton datatype for a {value.dtype} input")


def _check_identity(where: str, config: dict, bundle_id: str, sha256: str) -> None:
    """The model's lineside_* parameters, written from the manifest by `lineside export triton`."""
    params = {k: (v or {}).get("string_value") for k, v in (config.get("parameters") or {}).items()}
    theirs = params.get("lineside_bundle_id")
    if theirs != bundle_id:
        raise TritonMismatch(
            f"{where} is of bundle {theirs or '(none: not written by lineside export triton)'}, this bundle "
            f"is {bundle_id}: export the server's repository from this bundle (lineside export triton) or "
            "run the bundle the server has"
        )
    if params.get("lineside_sha256") != sha256:
        raise TritonMismatch(
            f"{where} runs a graph of sha256 {str(params.get('lineside_sha256'))[:12]}…, this bundle's is "
            f"{sha256[:12]}…: export the server's repository from this bundle again"
        )


def _check_tensors(where: str, kind: str, specs: tuple[TensorSpec, ...], served: list) -> None:
    """The server's inputs or outputs against the manifest's: names in order, datatypes, shapes (a named
    dimension is -1 on the server; a batching model adds its batch dimension, which is named here)."""
    got = [t.get("name") for t in served]
    want = [s.name for s in specs]
    if got != want:
        raise TritonMismatch(f"{where}: the server's {kind}s are {got}, this bundle's manifest says {want}")
    for spec, tensor in zip(specs, served):
        shape = [int(d) for d in tensor.get("shape") or []]  # gRPC's JSON writes int64 as strings
        expected = [-1 if isinstance(d, str) else d for d in spec.shape]
        datatype = DATA_TYPES[spec.dtype][1]
        if tensor.get("datatype") != datatype or shape != expected:
            raise TritonMismatch(
                f"{where}: {kind} {spec.name} is {tensor.get('datatype')} {shape} on the server, this bundle's "
                f"manifest says {datatype} {expected}: export the server's repository from this bundle again"
            )


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
