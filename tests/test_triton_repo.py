"""`lineside export triton`: a Triton model repository written from the manifest, every config.pbtxt
parsed with Triton's own ModelConfig protobuf (tritonclient's model_config_pb2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from runtime.bundle.loader import Bundle, file_sha256
from runtime.bundle.triton_repo import DATA_TYPES, RepoOptions, model_name, write_repository

ROOT = Path(__file__).parents[1]


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(Bundle.open(tiny_bundle), out, RepoOptions(max_batch_size=4, queue_delay_us=1500, tensorrt=True))
    return out


def test_every_graph_and_precision_is_a_model_whose_config_triton_parses(tiny_bundle, repo):
    bundle = Bundle.open(tiny_bundle)
    expected = {model_name(c.name, p) for c in bundle.manifest.components.values() for p in c.files}
    assert {p.name for p in repo.iterdir() if p.is_dir()} == expected
    for component in bundle.manifest.components.values():
        for precision, entry in component.files.items():
            folder = repo / model_name(component.name, precision)
            config = parse(folder / "config.pbtxt")
            assert config.name == folder.name and config.platform == "onnxruntime_onnx"
            graph = folder / "1" / config.default_model_filename
            assert file_sha256(graph) == entry.sha256  # the bundle's own graph, in version folder 1
            params = {k: v.string_value for k, v in config.parameters.items()}
            assert params["lineside_bundle_id"] == bundle.bundle_id and params["lineside_sha256"] == entry.sha256
            assert params["lineside_precision"] == precision and params["lineside_component"] == component.name


def test_names_datatypes_and_dims_come_from_the_manifest(tiny_bundle, repo):
    bundle = Bundle.open(tiny_bundle)
    for component in bundle.manifest.components.values():
        config = parse(repo / model_name(component.name, "fp32") / "config.pbtxt")
        batched = config.max_batch_size > 0
        for specs, served in ((component.inputs, config.input), (component.outputs, config.output)):
            assert [t.name for t in served] == [s.name for s in specs]
            for spec, tensor in zip(specs, served):
                assert model_config_pb2.DataType.Name(tensor.data_type) == DATA_TYPES[spec.dtype][0]
                shape = spec.shape[1:] if batched else spec.shape
                assert list(tensor.dims) == [-1 if isinstance(d, str) else d for d in shape]


def test_graphs_with_a_named_batch_dimension_batch_dynamically_the_others_do_not(tiny_bundle, repo):
    text = parse(repo / "clip_text_fp32" / "config.pbtxt")  # input_ids (batch, 77)
    assert text.max_batch_size == 4 and text.dynamic_batching.max_queue_delay_microseconds == 1500
    image = parse(repo / "clip_image_fp32" / "config.pbtxt")  # pixels (1, 3, H, W): batch 1 in the graph
    assert image.max_batch_size == 0 and not image.HasField("dynamic_batching")
    decoder = parse(repo / "sam_decoder_fp32" / "config.pbtxt")  # orig_im_size (2,): no batch dimension
    assert decoder.max_batch_size == 0


def test_the_tensorrt_accelerator_carries_the_manifest_profile(tiny_bundle, repo):
    bundle = Bundle.open(tiny_bundle)
    profile = bundle.component("clip_text").tensorrt_profile["input_ids"]
    config = parse(repo / "clip_text_fp32" / "config.pbtxt")
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP32"
    assert trt.parameters["trt_profile_min_shapes"] == "input_ids:" + "x".join(map(str, profile["min"]))
    widest = [max(profile["max"][0], 4), *profile["max"][1:]]
    assert trt.parameters["trt_profile_max_shapes"] == "input_ids:" + "x".join(map(str, widest))


def test_the_manifest_lies_beside_the_models(tiny_bundle, repo):
    assert json.loads((repo / "manifest.json").read_text()) == json.loads((tiny_bundle / "manifest.json").read_text())


def test_external_data_travels_with_its_graph(tmp_path, bundle_copy):
    """A graph whose weights live in NAME.onnx.data finds them by that name in its version folder."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    image = manifest["components"]["clip_image"]
    data = bundle_copy / "clip_image.fp32.onnx.data"
    data.write_bytes(b"weights")
    image["assets"]["fp32.data"] = {"path": data.name, "sha256": file_sha256(data), "bytes": 7}
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    write_repository(Bundle.open(bundle_copy), tmp_path / "repo", precisions=["fp32"])
    assert (tmp_path / "repo" / "clip_image_fp32" / "1" / data.name).read_bytes() == b"weights"


def test_a_repository_is_written_into_a_new_or_empty_folder_only(tiny_bundle, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "old_model").mkdir()
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_repository(Bundle.open(tiny_bundle), tmp_path / "repo")
    with pytest.raises(ValueError, match="max batch size"):
        RepoOptions(max_batch_size=-1)


def test_lineside_export_triton_runs_without_torch(tiny_bundle, tmp_path):
    """The GPU server's box writes its repository with the runtime alone."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from lineside.cli import main\n"
        f"sys.exit(main(['export', 'triton', '--bundle', {str(tiny_bundle)!r}, '--repo', {str(tmp_path / 'r')!r},"
        " '--precisions', 'fp32', '--max-batch-size', '2']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "4 models" in done.stdout
    assert parse(tmp_path / "r" / "clip_text_fp32" / "config.pbtxt").max_batch_size == 2
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr
