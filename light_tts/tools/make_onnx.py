"""Writes small random stand-ins for speech_tokenizer_v2.onnx and campplus.onnx (same inputs, outputs and dtypes).

Built with the onnx helper API (no exporter), deterministic for a seed. Both sizes stay small: the networks
only feed the frontend, so a `full` made-up model needs the released interfaces, not the released widths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NUM_FSQ_DIMS = 8  # the S3 tokenizer v2 quantises 8 dims to 3 levels each: 3**8 = 6561 tokens
HIDDEN = {"tiny": 32, "full": 128}


def _check_size(size: str) -> int:
    if size not in HIDDEN:
        raise ValueError(f"size must be one of {sorted(HIDDEN)}, got {size!r}")
    return HIDDEN[size]


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def _save(graph: onnx.GraphProto, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="light_tts")
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_speech_tokenizer_onnx(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """feats [1,128,T] float32 + feats_length [1] int32 -> indices int32 [1, ceil(feats_length / 4)] in [0, 6561).

    Conv (kernel 4, stride 4: 100 -> 25 frames/s) -> tanh -> projection to 8 dims -> FSQ rounding to
    {-1, 0, 1} -> base-3 code, the way the released tokenizer forms its ids.
    """
    hidden = _check_size(size)
    rng = np.random.default_rng(seed)
    weights = [
        _const("conv_w", (rng.standard_normal((hidden, 128, 4)) * 0.1).astype(np.float32)),
        _const("conv_b", (rng.standard_normal(hidden) * 0.5).astype(np.float32)),
        _const("proj_w", (rng.standard_normal((hidden, NUM_FSQ_DIMS)) / np.sqrt(hidden) * 2).astype(np.float32)),
        _const("one", np.array(1.0, dtype=np.float32)),
        _const("digit_weights", (3.0 ** np.arange(NUM_FSQ_DIMS, dtype=np.float32)).reshape(1, 1, NUM_FSQ_DIMS)),
        _const("sum_axes", np.array([2], dtype=np.int64)),
        _const("three", np.array([3], dtype=np.int32)),
        _const("four", np.array([4], dtype=np.int32)),
        _const("zero", np.array([0], dtype=np.int64)),
        _const("time_axis", np.array([1], dtype=np.int64)),
    ]
    nodes = [
        # pads [0, 3]: ceil(T / 4) output frames, like the released tokenizer's two stride-2 convs
        helper.make_node("Conv", ["feats", "conv_w", "conv_b"], ["h"], kernel_shape=[4], strides=[4], pads=[0, 3]),
        helper.make_node("Tanh", ["h"], ["h_act"]),
        helper.make_node("Transpose", ["h_act"], ["h_t"], perm=[0, 2, 1]),  # (1, T4, hidden)
        helper.make_node("MatMul", ["h_t", "proj_w"], ["z"]),  # (1, T4, 8)
        helper.make_node("Tanh", ["z"], ["z_act"]),
        helper.make_node("Round", ["z_act"], ["levels"]),  # each dim in {-1, 0, 1}
        helper.make_node("Add", ["levels", "one"], ["digits"]),  # {0, 1, 2}
        helper.make_node("Mul", ["digits", "digit_weights"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "sum_axes"], ["code_f"], keepdims=0),  # (1, T4)
        helper.make_node("Cast", ["code_f"], ["codes"], to=TensorProto.INT32),
        # keep ceil(feats_length / 4) tokens: frames past the stated length are padding
        helper.make_node("Add", ["feats_length", "three"], ["len_plus"]),
        helper.make_node("Div", ["len_plus", "four"], ["num_tokens_i32"]),
        helper.make_node("Cast", ["num_tokens_i32"], ["num_tokens"], to=TensorProto.INT64),
        helper.make_node("Slice", ["codes", "zero", "num_tokens", "time_axis"], ["indices"]),
    ]
    graph = helper.make_graph(
        nodes,
        "speech_tokenizer_v2_standin",
        inputs=[
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        outputs=[helper.make_tensor_value_info("indices", TensorProto.INT32, [1, "num_tokens"])],
        initializer=weights,
    )
    return _save(graph, path)


def write_campplus_onnx(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """input [1,T,80] float32 -> output [1,192] float32: per-frame MLP, mean over time, projection."""
    hidden = _check_size(size)
    rng = np.random.default_rng(seed + 1)
    weights = [
        _const("w1", (rng.standard_normal((80, hidden)) / np.sqrt(80)).astype(np.float32)),
        _const("b1", (rng.standard_normal(hidden) * 0.1).astype(np.float32)),
        _const("w2", (rng.standard_normal((hidden, 192)) / np.sqrt(hidden)).astype(np.float32)),
        _const("b2", (rng.standard_normal(192) * 0.1).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),  # (1, T, hidden)
        helper.make_node("Add", ["h", "b1"], ["h_b"]),
        helper.make_node("Tanh", ["h_b"], ["h_act"]),
        helper.make_node("ReduceMean", ["h_act"], ["pooled"], axes=[1], keepdims=0),  # (1, hidden)
        helper.make_node("MatMul", ["pooled", "w2"], ["e"]),
        helper.make_node("Add", ["e", "b2"], ["output"]),  # (1, 192)
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_standin",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
        initializer=weights,
    )
    return _save(graph, path)
