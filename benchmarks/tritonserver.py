"""A real tritonserver on loopback, for the Triton tests and the cameras benchmark: the one nvidia-pytriton's
wheel carries (2.51, Python backend only), serving the Python-backend twin of a repository `lineside export
triton` wrote.

The twin is the exported repository with each config's platform swapped for the Python backend and a
model.py (triton_twin_model.py) that runs the model's own ONNX graph: same names, dims, batching and
lineside_* parameters, so the client cannot tell it from the onnxruntime backend. The server is
started as a child process and stopped by its PID.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

TWIN_MODEL = Path(__file__).with_name("triton_twin_model.py")
INSTALL = "pip install --no-deps nvidia-pytriton==0.7.0 (.ci/run does)"


class TritonUnavailable(RuntimeError):
    """No tritonserver to start here, or it did not come up: the message says why and what to install."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_files() -> Path:
    """The tritonserver folder inside the nvidia-pytriton wheel (found without importing pytriton, whose
    own dependencies are not installed: only its server is used)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable(f"nvidia-pytriton is not installed: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0]) / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"{folder} has no bin/tritonserver: {INSTALL}")
    return folder


def python_twin(exported: Path, twin: Path) -> Path:
    """A copy of the exported repository whose models run on the Python backend (configs parsed and
    rewritten with Triton's own ModelConfig message, so nothing but the backend changes)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    shutil.copytree(exported, twin)
    for config_path in twin.glob("*/config.pbtxt"):
        config = text_format.Parse(config_path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        config.ClearField("platform")
        config.ClearField("default_model_filename")
        config.ClearField("optimization")  # TensorRT is the onnxruntime backend's, not the Python backend's
        config.backend = "python"
        config_path.write_text(text_format.MessageToString(config), encoding="utf-8")
        for version in config_path.parent.iterdir():
            if version.is_dir():
                shutil.copyfile(TWIN_MODEL, version / "model.py")
                (version / "sys_path.json").write_text(json.dumps(packages()), encoding="utf-8")
    return twin


def backends(folder: Path) -> Path:
    """A backend folder with the Python backend and the stub built for this interpreter's minor version."""
    files = server_files()
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copyfile(files / "backends" / "python" / name, python / name)
    stub = files / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copyfile(stub / "triton_python_backend_stub", python / "triton_python_backend_stub")
    os.chmod(python / "triton_python_backend_stub", 0o755)
    return folder


def packages() -> list[str]:
    """This interpreter's import path, which the twin's model.py puts first in the stub's."""
    return [str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()]


def stub_environment() -> dict[str, str]:
    """The stub embeds libpython: it must load this interpreter's (a pyenv build is found in its own lib
    folder, before the system's of another patch level); copied out of the wheel, it finds the wheel's
    libraries (CUDA's runtime) through the path too."""
    env = dict(os.environ)
    wheel_libs = server_files().parent.parent / "nvidia_pytriton.libs"  # the copied stub's own libraries
    libdir = sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH")) if p)
    return env


class TritonServer:
    """tritonserver on 127.0.0.1 over `repos`, its HTTP, gRPC and metrics ports its own; `start`, `stop`
    at will (a restart listens on the same ports)."""

    def __init__(self, repos: list[Path], folder: Path):
        self.repos, self.folder = repos, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.exe = server_files() / "bin" / "tritonserver"
        self.backends = backends(folder / "backends")
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = folder / "tritonserver.log"
        self.proc: subprocess.Popen | None = None

    def url(self, protocol: str, timeout: float | None = None) -> str:
        """The --providers value for this server, as result lines name it."""
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"triton://127.0.0.1:{port}?protocol={protocol}" + (f"&timeout={timeout:g}" if timeout else "")

    def start(self, wait_s: float = 60.0) -> None:
        args = [
            str(self.exe),
            *[f"--model-repository={repo}" for repo in self.repos],
            f"--backend-directory={self.backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=2",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=stub_environment())
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TritonUnavailable(f"tritonserver not ready after {wait_s:.0f} s:\n{self.tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to our PID, SIGKILL if it lingers; the stubs it started go with it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
