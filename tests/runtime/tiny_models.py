"""Tiny ONNX models with Kokoro-like contracts under different naming conventions.

The audio output is a deterministic function of every input (length T + 2 for T phonemes, values
scaled by the style mean and the speed), so a feed with a wrong name or dtype fails in ORT and a
right one gives a checkable result.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

ONNX_DTYPES = {
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
}


def build_contract_model(
    path: Path,
    *,
    tokens: str = "tokens",
    tokens_dtype: str = "int64",
    style: str = "style",
    speed: str = "speed",
    speed_dtype: str = "float32",
    audio: str = "audio",
    extra_outputs: tuple[str, ...] = (),
    extra_inputs: tuple[str, ...] = (),
) -> Path:
    """audio[i] = float(padded_tokens[i]) * mean(style) * float(speed), shape [T]."""
    nodes = [
        helper.make_node("Cast", [tokens], ["tok_f"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["tok_f"], ["tok_2d"], axis=0),
        helper.make_node("ReduceMean", [style], ["style_mean"], keepdims=0),
        helper.make_node("Cast", [speed], ["speed_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["tok_2d", "style_mean"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "speed_f"], ["scaled2"]),
        helper.make_node("Reshape", ["scaled2", "flat"], [audio]),
    ]
    outputs = [helper.make_tensor_value_info(audio, TensorProto.FLOAT, ["N"])]
    for name in extra_outputs:
        nodes.append(helper.make_node("ReduceSum", [tokens], [name], keepdims=0))
        outputs.append(helper.make_tensor_value_info(name, ONNX_DTYPES[tokens_dtype], []))
    inputs = [
        helper.make_tensor_value_info(tokens, ONNX_DTYPES[tokens_dtype], [1, "T"]),
        helper.make_tensor_value_info(style, TensorProto.FLOAT, [1, 256]),
        helper.make_tensor_value_info(speed, ONNX_DTYPES[speed_dtype], [1]),
    ]
    for name in extra_inputs:
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_unused"]))
    graph = helper.make_graph(
        nodes,
        "contract",
        inputs,
        outputs,
        initializer=[helper.make_tensor("flat", TensorProto.INT64, [1], [-1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
