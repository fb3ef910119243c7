"""INT4 pass on the synthetic Kokoro-shaped model: nodes, dtypes, validation, fidelity."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from pydantic import ValidationError

from kokoro_opt.errors import ModelFormatError, UserInputError
from kokoro_opt.passes.base import PassContext
from kokoro_opt.passes.int4 import FOLD_SESSION_CONFIG, Config, run

SMALL = 64  # the synthetic weights are tiny; the default threshold (4096) would skip most


@pytest.fixture(scope="module")
def fp32(synthetic_fp32: Path) -> onnx.ModelProto:
    return onnx.load(str(synthetic_fp32))


@pytest.fixture(scope="module")
def feeds(fp32: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Held-out sentences read by real voices: inputs like the ones the model will see."""
    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import corpus_feeds
    from kokoro_opt.runtime.contract import ModelContract

    _, out = corpus_feeds(load_texts("smoke"), ModelContract.from_onnx(fp32), count=6, seed=3)
    return out


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, Any]], **config: str) -> list[Any]:
    opts = ort.SessionOptions()
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return [session.run(None, f)[0] for f in feeds]


def _error(model: onnx.ModelProto, ref: onnx.ModelProto, feeds: list[dict[str, Any]]) -> float:
    got, want = _outputs(model, feeds), _outputs(ref, feeds)
    pairs = zip(got, want, strict=True)
    return float(np.mean([np.linalg.norm(g - w) / np.linalg.norm(w) for g, w in pairs]))


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


def _dq_feeding(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type == op_type:
            src = producers.get(node.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                found.append(src)
    return found


def test_matmul_becomes_matmulnbits(fp32: onnx.ModelProto, feeds: list) -> None:
    before = copy.deepcopy(fp32)
    result = run(fp32, Config(min_elements=SMALL), PassContext())
    assert fp32 == before  # the input model is not touched
    ops = _ops(result.model)
    assert ops.get("MatMul", 0) == 0 and ops["MatMulNBits"] == 4
    # the two ALBERT layers share one weight: one quantized copy serves both nodes
    nbits = [n for n in result.model.graph.node if n.op_type == "MatMulNBits"]
    assert len({n.input[1] for n in nbits}) == 3
    assert result.details["quantized"] == {"MatMulNBits": 4}
    assert result.details["weight_bytes_after"] < result.details["weight_bytes_before"]
    assert ops.get("DequantizeLinear", 0) == 0 and ops["Conv"] == 4
    assert _error(result.model, fp32, feeds) < 0.1


@pytest.mark.parametrize("symmetric", [False, True])
def test_conv_weights_become_4bit_dequantize_linear(
    fp32: onnx.ModelProto, feeds: list, symmetric: bool
) -> None:
    config = Config(min_elements=SMALL, conv=True, lstm=True, gather=True, symmetric=symmetric)
    result = run(fp32, config, PassContext())
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain == "")
    assert opset == 21 and model.ir_version >= 10
    inits = {t.name: t for t in model.graph.initializer}
    want = TensorProto.INT4 if symmetric else TensorProto.UINT4
    for op, count in (("Conv", 4), ("ConvTranspose", 1), ("LSTM", 1)):
        dqs = _dq_feeding(model, op)
        assert len(dqs) == count, op
        for dq in dqs:
            assert inits[dq.input[0]].data_type == want
            assert len(dq.input) == (2 if symmetric else 3)
            attrs = {a.name: a.i for a in dq.attribute}
            assert attrs["block_size"] == 32
    conv = next(n for n in _dq_feeding(model, "Conv") if "conv_pre" in n.name)
    assert {a.name: a.i for a in conv.attribute}["axis"] == 1  # blocks of input channels
    # no float copy of a quantized weight is left behind
    assert not any(
        t.data_type == TensorProto.FLOAT and t.name.endswith("conv_pre.weight")
        for t in model.graph.initializer
    )
    assert result.details["quantized"]["DequantizeLinear->Conv"] == 4
    assert result.details["session_config"] == FOLD_SESSION_CONFIG
    # 4 bits + a scale per 32 values: about 1/6 of float32 once everything is quantized
    assert result.details["weight_bytes_after"] < 0.3 * result.details["weight_bytes_before"]
    assert _error(model, fp32, feeds) < 0.25
    # folding the DequantizeLinear nodes at load time gives the same audio
    folded = _outputs(model, feeds[:2], **FOLD_SESSION_CONFIG)
    for a, b in zip(folded, _outputs(model, feeds[:2]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_hqq_stores_float_zero_points_for_matmul(fp32: onnx.ModelProto, feeds: list) -> None:
    result = run(fp32, Config(algo="hqq", min_elements=SMALL, conv=True), PassContext())
    inits = {t.name: t for t in result.model.graph.initializer}
    nbits = [n for n in result.model.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(inits[n.input[3]].data_type == TensorProto.FLOAT for n in nbits)
    assert _dq_feeding(result.model, "Conv")
    assert _error(result.model, fp32, feeds) < 0.25


def test_gptq_is_closer_to_fp32_than_rtn(fp32: onnx.ModelProto, feeds: list) -> None:
    common = {"min_elements": SMALL, "conv": True, "lstm": True, "samples": 12}
    rtn = run(fp32, Config(**common), PassContext())
    gptq = run(fp32, Config(algo="gptq", **common), PassContext())
    assert _ops(gptq.model)["MatMulNBits"] == 4
    calib = gptq.details["calibration"]
    assert calib["corpus"] == "train" and calib["samples"] == 12
    # the style projections see one style vector per sample: too few for their Hessian
    assert "predictor.style_proj.weight" in gptq.details["gptq_rtn_fallback"]
    assert _error(gptq.model, fp32, feeds) < 0.6 * _error(rtn.model, fp32, feeds)


def test_gather_becomes_gather_block_quantized(fp32: onnx.ModelProto) -> None:
    result = run(fp32, Config(min_elements=SMALL, gather=True, matmul=False), PassContext())
    ops = _ops(result.model)
    assert ops["GatherBlockQuantized"] == 1 and ops["MatMul"] == 4
    assert result.details["quantized"] == {"GatherBlockQuantized": 1}


def test_exclude_and_small_weights_stay_float(fp32: onnx.ModelProto) -> None:
    config = Config(conv=True, min_elements=SMALL, exclude=["*/conv_post/*", "*/nothing/*"])
    result = run(fp32, config, PassContext())
    kept = result.details["kept_float"]
    assert any("conv_post" in name for name in kept)
    assert result.details["unmatched_patterns"] == ["*/nothing/*"]
    assert result.details["quantized"]["DequantizeLinear->Conv"] == 3
    default = run(fp32, Config(conv=True), PassContext())
    assert any(
        reason.startswith("fewer than 4096") for reason in default.details["kept_float"].values()
    )


def test_already_quantized_model_is_refused(synthetic_int8: Path) -> None:
    with pytest.raises(ModelFormatError, match="already quantized .*MatMulInteger"):
        run(onnx.load(str(synthetic_int8)), Config(), PassContext())


def test_nothing_left_to_quantize(fp32: onnx.ModelProto) -> None:
    with pytest.raises(UserInputError, match="Nothing to quantize"):
        run(fp32, Config(min_elements=10**9), PassContext())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_size": 48}, "block_size 48 is not supported; use one of 32, 64, 128"),
        ({"algo": "awq"}, "Input should be 'rtn', 'hqq' or 'gptq'"),
        ({"algo": "hqq", "symmetric": True}, "hqq fits a zero point per block"),
        ({"matmul": False}, "nothing to quantize: enable at least one of"),
        ({"calib": "heldout"}, "held out for evaluation and must never be used"),
        ({"accuracy_level": 5}, "Input should be 0, 1, 2, 3 or 4"),
        ({"exclude": ["re:("]}, "is not a valid regular expression"),
        ({"min_elements": 0}, "greater than or equal to 1"),
        ({"blocksize": 32}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Config(**settings)


def test_weights_are_packed_two_per_byte(fp32: onnx.ModelProto) -> None:
    result = run(fp32, Config(min_elements=SMALL, conv=True, matmul=False), PassContext())
    inits = {t.name: t for t in result.model.graph.initializer}
    dq = _dq_feeding(result.model, "Conv")[0]
    data = inits[dq.input[0]]
    assert len(data.raw_data) == (int(np.prod(data.dims)) + 1) // 2
    scale = numpy_helper.to_array(inits[dq.input[1]])
    assert scale.shape[1] == -(-data.dims[1] // 32)
