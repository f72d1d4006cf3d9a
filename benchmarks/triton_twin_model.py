"""model.py of the Python-backend twin of an exported repository (benchmarks/tritonserver.py copies it).

The tritonserver that PyPI carries (nvidia-pytriton's) has the Python backend only, so each model
of the repository `lineside export triton` wrote runs its own ONNX graph through onnxruntime here,
under the same names, shapes and batching. A batched model gets the requests the dynamic batcher
gathered and runs them as one batch, as the onnxruntime backend would.
"""

import json
import sys
from pathlib import Path

# The stub's embedded interpreter ignores PYTHONPATH: the twin names the calling environment's packages beside
# this file, read before anything imports numpy (the stub imports this module first).
sys.path[:0] = json.loads((Path(__file__).parent / "sys_path.json").read_text(encoding="utf-8"))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        graph = next(folder.glob("*.onnx"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        feeds = [{n: _array(pb_utils.get_input_tensor_by_name(r, n)) for n in self.inputs} for r in requests]
        if self.batched:  # (sum of the requests' batches, ...) through the graph once, then split back
            sizes = [next(iter(f.values())).shape[0] for f in feeds]
            joined = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            values = self.session.run(self.outputs, joined)
            cuts = np.cumsum(sizes)[:-1]
            results = [[np.split(v, cuts)[i] for v in values] for i in range(len(requests))]
        else:
            results = [self.session.run(self.outputs, f) for f in feeds]
        return [pb_utils.InferenceResponse([_tensor(n, v) for n, v in zip(self.outputs, values)]) for values in results]


# The stub of tritonserver 2.51 predates numpy 2: its numpy buffers come back empty under numpy 2, so
# tensors cross through DLPack, which both sides speak.
def _array(tensor) -> np.ndarray:
    return np.from_dlpack(tensor).copy()


def _tensor(name: str, value: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(value))
