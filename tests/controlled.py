"""A bundle whose graphs are written by hand, so the right answer is known.

Random weights cannot show that detection works. Here the image graph turns
red-on-grey patches into tokens along an "abnormal + scratch" direction and grey
patches into a "normal" direction; the text graph sums per-token vectors in
which words like "damaged" point abnormal, "flawless" normal and "scratch" along
the scratch direction; good parts also carry a "grainy" texture direction that
the normal prompts do not describe. SAM's stand-in segments red pixels. Each graph is real
ONNX run by onnxruntime; the manifest is written by the runtime's own classes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.writer import BundleWriter
from runtime.bundle.manifest import Component, TensorSpec
from runtime.bundle.tokenizer import ClipTokenizer
from runtime.detect.prompt_bank import BankPrompt, PromptBank

D = 8
SIZE, PATCH = 64, 8
GRID = SIZE // PATCH
NORMAL, ABNORMAL, SCRATCH, STAIN, CONTEXT, GRAIN = (np.eye(D, dtype=np.float32)[i] for i in range(6))
LOGIT_SCALE = 100.0  # the temperature its scores were designed with, recorded as a checkpoint's own would be
CATEGORY = "widget"
SCRATCH_PROMPT = "a photo of a widget with a scratch"
STAIN_PROMPT = "a photo of a widget with a stain"
WORDS = {
    "flawless": 3 * NORMAL,
    "perfect": 3 * NORMAL,
    "unblemished": 3 * NORMAL,
    "without": 3 * NORMAL - 3 * ABNORMAL,
    "damaged": 3 * ABNORMAL,
    "broken": 3 * ABNORMAL,
    "flaw": 3 * ABNORMAL,
    "defect": 3 * ABNORMAL,
    "damage": 3 * ABNORMAL,
    "scratch": 3 * ABNORMAL + 6 * SCRATCH,
    "stain": 3 * ABNORMAL + 6 * STAIN,
    "grainy": 3 * GRAIN + 0.6 * ABNORMAL,  # how every good part's surface looks: a prompt that fires on them
}


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "controlled", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def image_graph() -> onnx.ModelProto:
    """pixels (B,3,64,64) 0..255 -> tokens from patch colour: grey -> normal with a grainy
    texture, red -> abnormal+scratch."""
    w = np.stack([NORMAL + 1.5 * GRAIN, 4 * (ABNORMAL + SCRATCH), 0.2 * CONTEXT])  # rows: g+b, relu(r-g), 1
    nodes = [
        helper.make_node("Div", ["pixels", "c255"], ["x"]),
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH]),
        helper.make_node("Split", ["p", "split3"], ["r", "g", "b"], axis=1),
        helper.make_node("Add", ["g", "b"], ["gb"]),
        helper.make_node("Sub", ["r", "g"], ["rg"]),
        helper.make_node("Relu", ["rg"], ["red"]),
        helper.make_node("Mul", ["gb", "zero"], ["z"]),
        helper.make_node("Add", ["z", "one"], ["ones"]),
        helper.make_node("Concat", ["gb", "red", "ones"], ["f"], axis=1),
        helper.make_node("Reshape", ["f", "shape_bcn"], ["fr"]),
        helper.make_node("Transpose", ["fr"], ["ft"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["ft", "w"], ["tok"]),
        helper.make_node("ReduceL2", ["tok", "axis_last"], ["n"], keepdims=1),
        helper.make_node("Div", ["tok", "n"], ["tokens"]),
        helper.make_node("ReduceMean", ["tokens", "axis1"], ["g0"], keepdims=0),
        helper.make_node("ReduceL2", ["g0", "axis_last"], ["gn"], keepdims=1),
        helper.make_node("Div", ["g0", "gn"], ["image_embedding"]),
        helper.make_node("Identity", ["tokens"], ["patch_tokens_1"]),
        helper.make_node("Identity", ["tokens"], ["patch_tokens_2"]),
    ]
    inits = [
        _const("c255", np.float32(255)),
        _const("split3", np.array([1, 1, 1], np.int64)),
        _const("zero", np.float32(0)),
        _const("one", np.float32(1)),
        _const("shape_bcn", np.array([0, 3, -1], np.int64)),
        _const("w", w.astype(np.float32)),
        _const("axis_last", np.array([-1], np.int64)),
        _const("axis1", np.array([1], np.int64)),
    ]
    f32 = TensorProto.FLOAT
    return _model(
        nodes,
        [helper.make_tensor_value_info("pixels", f32, ["batch", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("image_embedding", f32, ["batch", D]),
            helper.make_tensor_value_info("patch_tokens_1", f32, ["batch", GRID * GRID, D]),
            helper.make_tensor_value_info("patch_tokens_2", f32, ["batch", GRID * GRID, D]),
        ],
        inits,
    )


def token_table(tokenizer: ClipTokenizer) -> np.ndarray:
    """Per-id vectors: context words weakly along CONTEXT, keywords as WORDS says."""
    table = np.tile(0.05 * CONTEXT, (len(tokenizer.ids), 1)).astype(np.float32)
    table[[0, tokenizer.sot, tokenizer.eot]] = 0
    owner: dict[int, str] = {}
    for word, vector in WORDS.items():
        first, *rest = tokenizer.encode(word)
        assert owner.setdefault(first, word) == word, f"{word} shares token {first} with {owner[first]}"
        table[first] = vector
        table[rest] = 0
    return table


def text_graph(table: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"], axis=0),
        helper.make_node("ReduceSum", ["e", "axis1"], ["s0"], keepdims=0),
        helper.make_node("Add", ["s0", "eps"], ["s"]),
        helper.make_node("ReduceL2", ["s", "axis_last"], ["n"], keepdims=1),
        helper.make_node("Div", ["s", "n"], ["text_embedding"]),
    ]
    inits = [
        _const("table", table),
        _const("axis1", np.array([1], np.int64)),
        _const("axis_last", np.array([-1], np.int64)),
        _const("eps", (1e-3 * np.eye(D)[7]).astype(np.float32)),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 77])],
        [helper.make_tensor_value_info("text_embedding", TensorProto.FLOAT, ["batch", D])],
        inits,
    )


def sam_encoder_graph() -> onnx.ModelProto:
    """Redness pooled to 64x64, repeated over 256 channels."""
    nodes = [
        helper.make_node("Split", ["pixels", "split3"], ["r", "g", "b"], axis=1),
        helper.make_node("Sub", ["r", "g"], ["rg"]),
        helper.make_node("Relu", ["rg"], ["red"]),
        helper.make_node("Div", ["red", "c255"], ["redn"]),
        helper.make_node("AveragePool", ["redn"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Expand", ["pooled", "shape256"], ["image_embeddings"]),
    ]
    inits = [
        _const("split3", np.array([1, 1, 1], np.int64)),
        _const("c255", np.float32(255)),
        _const("shape256", np.array([1, 256, 64, 64], np.int64)),
    ]
    f32 = TensorProto.FLOAT
    return _model(
        nodes,
        [helper.make_tensor_value_info("pixels", f32, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("image_embeddings", f32, [1, 256, 64, 64])],
        inits,
    )


def sam_decoder_graph() -> onnx.ModelProto:
    """Masks = redness > 0.25, at orig_im_size (square frames only: no padding to undo)."""
    nodes = [
        helper.make_node("Slice", ["image_embeddings", "s0", "s1", "axis1"], ["ch"]),
        helper.make_node("Sub", ["ch", "quarter"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["logit"]),
        helper.make_node("Cast", ["orig_im_size"], ["hw"], to=TensorProto.INT64),
        helper.make_node("Concat", ["one_one", "hw"], ["size"], axis=0),
        helper.make_node("Resize", ["logit", "", "", "size"], ["m1"], mode="linear"),
        helper.make_node("Tile", ["m1", "rep4"], ["masks"]),
        helper.make_node("Resize", ["logit", "", "", "low_size"], ["l1"], mode="linear"),
        helper.make_node("Tile", ["l1", "rep4"], ["low_res_masks"]),
        helper.make_node("Identity", ["iou_const"], ["iou_predictions"]),
    ]
    inits = [
        _const("s0", np.array([0], np.int64)),
        _const("s1", np.array([1], np.int64)),
        _const("axis1", np.array([1], np.int64)),
        _const("quarter", np.float32(0.25)),
        _const("gain", np.float32(40)),
        _const("one_one", np.array([1, 1], np.int64)),
        _const("rep4", np.array([1, 4, 1, 1], np.int64)),
        _const("low_size", np.array([1, 1, 256, 256], np.int64)),
        _const("iou_const", np.full((1, 4), 0.9, np.float32)),
    ]
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("image_embeddings", f32, [1, 256, 64, 64]),
        helper.make_tensor_value_info("point_coords", f32, [1, "points", 2]),
        helper.make_tensor_value_info("point_labels", f32, [1, "points"]),
        helper.make_tensor_value_info("mask_input", f32, [1, 1, 256, 256]),
        helper.make_tensor_value_info("has_mask_input", f32, [1]),
        helper.make_tensor_value_info("orig_im_size", f32, [2]),
    ]
    outputs = [
        helper.make_tensor_value_info("masks", f32, [1, 4, "height", "width"]),
        helper.make_tensor_value_info("iou_predictions", f32, [1, 4]),
        helper.make_tensor_value_info("low_res_masks", f32, [1, 4, 256, 256]),
    ]
    return _model(nodes, inputs, outputs, inits)


def _component(writer, name, role, model, inputs, outputs, **extra) -> Component:
    onnx.save(model, str(writer.path(f"{name}.fp32.onnx")))
    files = {"fp32": writer.entry(f"{name}.fp32.onnx")}
    return Component(name, role, "onnx", files, tuple(inputs), tuple(outputs), **extra)


def build_controlled_bundle(out: Path, vocab: Path, with_sam: bool = True) -> Path:
    """Write the hand-made bundle (and a prompt bank for CATEGORY) to `out`."""
    f32 = "float32"
    with BundleWriter(out, "controlled") as writer:
        shutil.copyfile(vocab, writer.path("tokenizer/vocab.txt.gz"))
        tokenizer = ClipTokenizer(writer.path("tokenizer/vocab.txt.gz"))
        prep = {
            "layout": "NCHW",
            "colour": "RGB",
            "dtype": f32,
            "range": [0, 255],
            "resize": "stretch",
            "size": [SIZE, SIZE],
            "interpolation": "area",
            "normalisation": {"where": "graph"},
        }
        writer.add(
            _component(
                writer,
                "clip_image",
                "image_encoder",
                image_graph(),
                [TensorSpec("pixels", ("batch", 3, SIZE, SIZE), f32)],
                [TensorSpec("image_embedding", ("batch", D), f32)]
                + [TensorSpec(f"patch_tokens_{i}", ("batch", GRID * GRID, D), f32) for i in (1, 2)],
                preprocessing=prep,
                config={
                    "grid": [GRID, GRID],
                    "taps": [{"layer": i, "output": f"patch_tokens_{i}"} for i in (1, 2)],
                    "branches": ["language", "reference"],
                    "logit_scale": LOGIT_SCALE,
                },
            )
        )
        writer.add(
            _component(
                writer,
                "clip_text",
                "text_encoder",
                text_graph(token_table(tokenizer)),
                [TensorSpec("input_ids", ("batch", 77), "int64")],
                [TensorSpec("text_embedding", ("batch", D), f32)],
                assets={"tokenizer": writer.entry("tokenizer/vocab.txt.gz")},
                config={
                    "tokenizer": {
                        "kind": "clip_bpe",
                        "context_length": 77,
                        "num_merges": len(tokenizer.ranks),
                        "sot": tokenizer.sot,
                        "eot": tokenizer.eot,
                    }
                },
            )
        )
        if with_sam:
            _add_sam(writer)
        writer.commit()
    bank = PromptBank(
        CATEGORY,
        (
            BankPrompt(SCRATCH_PROMPT),
            BankPrompt(STAIN_PROMPT),
            BankPrompt("a photo of a widget with a flawless scratch", kept=False, reason="test"),
        ),
    )
    bank.write(out / "prompts" / f"{CATEGORY}.json")
    return out


def _add_sam(writer) -> None:
    f32 = "float32"
    mean = [123.675, 116.28, 103.53]
    writer.add(
        _component(
            writer,
            "sam_encoder",
            "sam_encoder",
            sam_encoder_graph(),
            [TensorSpec("pixels", (1, 3, 1024, 1024), f32)],
            [TensorSpec("image_embeddings", (1, 256, 64, 64), f32)],
            preprocessing={
                "resize": "longest_side",
                "target_length": 1024,
                "interpolation": "bilinear",
                "pad_value": mean,
                "normalisation": {"where": "graph"},
            },
        )
    )
    writer.add(
        _component(
            writer,
            "sam_decoder",
            "sam_decoder",
            sam_decoder_graph(),
            [
                TensorSpec("image_embeddings", (1, 256, 64, 64), f32),
                TensorSpec("point_coords", (1, "points", 2), f32),
                TensorSpec("point_labels", (1, "points"), f32),
                TensorSpec("mask_input", (1, 1, 256, 256), f32),
                TensorSpec("has_mask_input", (1,), f32),
                TensorSpec("orig_im_size", (2,), f32),
            ],
            [
                TensorSpec("masks", (1, 4, "height", "width"), f32),
                TensorSpec("iou_predictions", (1, 4), f32),
                TensorSpec("low_res_masks", (1, 4, 256, 256), f32),
            ],
            preprocessing={"target_length": 1024, "mask_input_size": 256},
            config={"mask_slots": {"single": [0], "multi": [1, 2, 3]}, "mask_threshold": 0.0},
        )
    )


def part(size: int = 256, red_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A grey part (HxWx3 uint8 BGR) with an optional red defect at x0, y0, x1, y1."""
    frame = np.full((size, size, 3), 128, np.uint8)
    if red_box:
        x0, y0, x1, y1 = red_box
        frame[y0:y1, x0:x1] = (0, 0, 255)  # BGR red
    return frame
