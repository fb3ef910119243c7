"""The synthetic model keeps the real contract and the four dynamic-quantized patterns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tests.synthetic import synthetic_feeds


def _run(path: Path, **kw) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["audio"], synthetic_feeds(**kw))[0]


def test_contract_and_length_scaling(synthetic_fp32: Path) -> None:
    model = onnx.load(synthetic_fp32)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {
        "tokens": onnx.TensorProto.INT64,
        "style": onnx.TensorProto.FLOAT,
        "speed": onnx.TensorProto.FLOAT,
    }
    short, long_, slow = (
        _run(synthetic_fp32, n_tokens=20),
        _run(synthetic_fp32, n_tokens=40),
        _run(synthetic_fp32, n_tokens=20, speed=0.5),
    )
    assert short.ndim == 1 and short.dtype == np.float32
    assert len(long_) > len(short) and len(slow) > len(short)
    assert 0.01 < float(np.abs(short).mean()) < 0.9


def test_int8_has_the_four_dynamic_patterns(synthetic_int8: Path, synthetic_fp32: Path) -> None:
    ops = Counter(n.op_type for n in onnx.load(synthetic_int8).graph.node)
    for op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "DequantizeLinear"):
        assert ops[op] >= 1, op
    ref, q = _run(synthetic_fp32), _run(synthetic_int8)
    assert ref.shape == q.shape
    assert float(np.abs(ref - q).max()) < 0.1
