"""Device-resident execution: a session's inputs and outputs bound where it runs.

    bound = BoundSession(session, component.inputs, component.outputs)
    out = bound.run({"pixels": pixels}, to_host=["image_embedding"])   # numpy for those,
                                                                       # OrtValues left on the device

With onnxruntime's IO binding a frame is copied to the device once, outputs
that the next graph consumes stay there as `OrtValue`s (SAM's image embeddings,
from encoder to decoder, never cross the bus), and only the outputs the numpy
scoring reads are copied back. Outputs with static shapes in the manifest get
buffers allocated once and reused; outputs never asked for are not bound, so
they are not copied either.

`cuda_graph`: for graphs whose inputs and outputs are all static, inputs are
copied into buffers allocated once as well, so every run uses the same device
addresses, which onnxruntime's CUDA-graph capture requires (the session must be
created with it: `OnnxSession(..., cuda_graph=True)`). Then a device output is
valid until the next run of the same graph: read it before that.

On the CPU provider the same code binds host memory; results equal unbound
runs exactly (tests/test_io_binding.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from .sessions import PROVIDER_NAMES, OnnxSession, _import_ort

NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "bool": np.bool_,
}
ON_GPU = (PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"])


def device_of(session: OnnxSession) -> str:
    """Where a session's tensors live: "cuda" when its first provider is CUDA or TensorRT, else "cpu"."""
    return "cuda" if session.providers and session.providers[0] in ON_GPU else "cpu"


def static(shape: Sequence) -> bool:
    return all(isinstance(d, int) for d in shape)


class BoundSession:
    """One session run with IO binding. `inputs` / `outputs`: the manifest's TensorSpecs
    (names, shapes, dtypes), from which static buffers are allocated."""

    def __init__(self, session: OnnxSession, inputs: Sequence, outputs: Sequence, cuda_graph: bool = False):
        self.session = session
        self.device = device_of(session)
        self.inputs, self.outputs = {t.name: t for t in inputs}, {t.name: t for t in outputs}
        self.cuda_graph = cuda_graph and self.device == "cuda" and all(static(t.shape) for t in (*inputs, *outputs))
        self._lock = threading.Lock()  # static buffers are shared by every run
        self._out_buffers = {n: self._buffer(t) for n, t in self.outputs.items() if static(t.shape)}
        self._in_buffers = {n: self._buffer(t) for n, t in self.inputs.items()} if self.cuda_graph else {}

    def _buffer(self, spec):
        ort = _import_ort()
        return ort.OrtValue.ortvalue_from_shape_and_type(list(spec.shape), NUMPY_DTYPES[spec.dtype], self.device, 0)

    @property
    def providers(self) -> tuple[str, ...]:
        return self.session.providers

    @property
    def requested(self) -> tuple[str, ...]:
        return self.session.requested

    @property
    def path(self):
        return self.session.path

    def run(self, feeds: Mapping, to_host: Sequence[str] | None = None, keep: Sequence[str] = ()) -> dict:
        """Run once. `feeds`: numpy arrays (copied to the device) or OrtValues already there.
        Returns numpy copies of the outputs in `to_host` (default: all) and OrtValues for those
        in `keep`; other outputs are neither bound nor returned."""
        host = list(self.outputs if to_host is None else to_host)
        wanted = [*host, *[n for n in keep if n not in host]]
        with self._lock:
            try:
                values = self._run_bound(feeds, host, wanted)
            except RuntimeError:
                if self.device == "cpu" or not self.session.requested[1:]:
                    raise
                return self._fall_back(feeds, wanted)
            # copies: a static buffer is overwritten by the next run
            return {n: (np.array(values[n].numpy(), copy=True) if n in host else values[n]) for n in wanted}

    def _run_bound(self, feeds: Mapping, host: list[str], wanted: list[str]) -> dict:
        binding = self.session.session.io_binding()
        for name, value in feeds.items():
            self._bind_input(binding, name, value)
        for name in wanted:
            # A kept output gets a fresh buffer (it outlives this run) unless capture needs a fixed one.
            if name in self._out_buffers and (name in host or self.cuda_graph):
                binding.bind_ortvalue_output(name, self._out_buffers[name])
            else:
                binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(wanted, binding.get_outputs()))

    def _fall_back(self, feeds: Mapping, wanted: list[str]) -> dict:
        """The accelerator failed at run time: `OnnxSession.run` moves to the next provider
        (and says so); buffers follow the session to its new device. Results are numpy."""
        host_feeds = {n: v if isinstance(v, np.ndarray) else v.numpy() for n, v in feeds.items()}
        out = self.session.run(host_feeds, wanted)
        self.device, self.cuda_graph, self._in_buffers = device_of(self.session), False, {}
        self._out_buffers = {n: self._buffer(t) for n, t in self.outputs.items() if static(t.shape)}
        return out

    def _bind_input(self, binding, name: str, value) -> None:
        if not isinstance(value, np.ndarray) and value.device_name().lower() != self.device:
            value = value.numpy()  # an OrtValue from another device (a graph that fell back to the CPU)
        if not isinstance(value, np.ndarray):  # an OrtValue, e.g. the encoder's output on the device
            binding.bind_ortvalue_input(name, value)
        elif name in self._in_buffers:  # same device address every run (CUDA graphs)
            self._in_buffers[name].update_inplace(np.ascontiguousarray(value))
            binding.bind_ortvalue_input(name, self._in_buffers[name])
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))


def bound(session: OnnxSession, component, io_binding: bool | None = None):
    """`session` in a BoundSession when IO binding applies, else as it is.

    io_binding None: on where the session runs on CUDA or TensorRT, off on the CPU (where a
    copy is a memcpy); True or False forces it. A session capturing CUDA graphs is always
    bound: capture needs its buffers at fixed addresses.
    """
    capture = getattr(session, "cuda_graph", False)
    use = io_binding if io_binding is not None else device_of(session) == "cuda"
    if not (use or capture):
        return session
    return BoundSession(session, component.inputs, component.outputs, cuda_graph=capture)
