"""Static INT8 pass on the synthetic Kokoro-shaped model: selection, QDQ layout, ranges, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from kokoro_opt.calib.feeds import corpus_feeds
from kokoro_opt.errors import CorpusError, ModelFormatError, UserInputError
from kokoro_opt.passes.base import PassContext
from kokoro_opt.passes.quantize_static import (
    HISTOGRAM_BINS,
    _calibration_session,
    _histogram_graph,
    build_config,
    central_range,
    int8_weights,
    run,
    select_nodes,
)
from kokoro_opt.runtime.contract import ModelContract

GEN = "/decoder/decoder/generator"


@pytest.fixture(scope="module")
def fp32(synthetic_fp32: Path) -> onnx.ModelProto:
    return onnx.load(str(synthetic_fp32))


def _run(
    model: onnx.ModelProto, tmp_path: Path, **settings: object
) -> tuple[onnx.ModelProto, dict]:
    config = build_config({"samples": 4, **settings})
    result = run(model, config, PassContext(work_dir=tmp_path, threads=1))
    return result.model, result.details


def _weight_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name -> the scale of the DequantizeLinear that feeds its weight."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if len(node.input) > 1 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            scales[node.name] = inits[dq.input[1]]
    return scales


def _audio(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def test_default_selection_quantizes_the_generator_blocks(
    fp32: onnx.ModelProto, tmp_path: Path
) -> None:
    model, details = _run(fp32, tmp_path)
    scales = _weight_scales(model)
    # The default rewrites lift every 1-D Conv to 2-D (renamed '<conv>/conv2d') before
    # calibration, and the default patterns still pick the same convs.
    assert details["rewrites"]["conv2d"]["rewritten"] >= 3
    assert set(scales) == {
        f"{GEN}/noise_convs.0/Conv/conv2d",
        f"{GEN}/resblocks.0/convs1.0/Conv/conv2d",
    }
    assert details["quantized"] == {"Conv": 2}
    assert f"{GEN}/conv_post/Conv/conv2d" in details["excluded"]
    assert details["calibration"]["samples"] == 4
    assert details["bytes_after"] > 0 and details["timings"]["total_s"] > 0
    # The input model is untouched, and the result still speaks: finite, same lengths.
    assert not any(n.op_type == "QuantizeLinear" for n in fp32.graph.node)
    _, feeds = corpus_feeds(["Hello there, my friend."], ModelContract.from_onnx(fp32), count=2)
    for a, b in zip(_audio(fp32, feeds), _audio(model, feeds), strict=True):
        assert a.shape == b.shape and np.isfinite(b).all()
        assert np.abs(a - b).max() < 0.5 * np.abs(a).max() + 1e-3


def test_default_selection_on_kokoro_node_names() -> None:
    """The measured default selection (docs/int8-static.md), on the real model's node names:
    a graph of bare nodes is enough, select_nodes reads only names and op types."""
    dec = "/decoder/decoder"
    int8 = [
        f"{GEN}/resblocks.0/convs2.2/Conv",
        f"{GEN}/resblocks.2/convs2.2/Conv",
        f"{GEN}/resblocks.1/convs2.1/Conv",
        f"{GEN}/resblocks.5/convs1.2/Conv",
        f"{GEN}/noise_res.1/convs2.2/Conv",
        f"{GEN}/noise_convs.1/Conv",
        f"{dec}/encode/conv2/Conv",
        f"{dec}/decode.0/conv1/Conv",
        f"{dec}/decode.3/conv1x1/Conv",
        f"{dec}/decode.2/conv2/Conv/conv2d",  # renamed by optimize's conv2d rewrite
    ]
    float_ = [
        f"{GEN}/resblocks.1/convs2.2/Conv",
        f"{GEN}/resblocks.3/convs2.2/Conv",
        f"{GEN}/resblocks.5/convs2.2/Conv/conv2d",
        f"{GEN}/resblocks.1/convs1.2/Conv",
        f"{GEN}/conv_post/Conv",
        f"{GEN}/conv_pre/Conv",
        f"{dec}/encode/conv1/Conv",
        f"{dec}/encode/conv1x1/Conv",
        "/encoder/F0.0/conv1/Conv",
    ]
    make = onnx.helper.make_node
    nodes = [make("Conv", ["x", "w"], [f"y{i}"], name=n) for i, n in enumerate(int8 + float_)]
    nodes.append(make("ConvTranspose", ["x", "w"], ["u"], name=f"{GEN}/ups.0/ConvTranspose"))
    graph = onnx.helper.make_graph(nodes, "names", [], [])
    selection = select_nodes(onnx.helper.make_model(graph), build_config({}))
    assert sorted(selection["quantize"]) == sorted(int8)
    assert sorted(selection["excluded"]) == sorted(float_)
    assert selection["candidates"] == {"Conv": len(int8) + len(float_)}


def test_per_channel_vs_per_tensor_scales(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    name = f"{GEN}/resblocks.0/convs1.0/Conv"
    out_channels = next(
        numpy_helper.to_array(t).shape[0]
        for t in fp32.graph.initializer
        if t.name == next(n.input[1] for n in fp32.graph.node if n.name == name)
    )
    kept = {"method": "minmax", "rewrites": "none"}  # node names as in the input
    per_channel, _ = _run(fp32, tmp_path / "pc", per_channel=True, **kept)
    per_tensor, _ = _run(fp32, tmp_path / "pt", per_channel=False, **kept)
    assert _weight_scales(per_channel)[name].shape == (out_channels,)
    assert _weight_scales(per_tensor)[name].size == 1


def test_all_nodes_and_patterns(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    model, details = _run(
        fp32,
        tmp_path,
        include=[],
        exclude=["*/conv_post/*", "re:attention"],
        ops="Conv,MatMul",
        rewrites="none",
    )
    quantized = set(_weight_scales(model))
    assert f"{GEN}/conv_post/Conv" not in quantized
    assert f"{GEN}/conv_pre/Conv" in quantized
    assert "/predictor/style_proj/MatMul" in quantized
    assert not any("attention" in n for n in quantized)
    assert details["quantized"]["MatMul"] >= 1
    selection = select_nodes(fp32, build_config({"exclude": ["*/nothing_here/*"]}))
    assert "*/nothing_here/*" in selection["unmatched"]


def test_weight_only_rest_stores_int8_and_keeps_compute_float(fp32: onnx.ModelProto) -> None:
    small, counts = int8_weights(fp32, min_elements=16)
    assert counts.get("Conv", 0) >= 1 and counts.get("LSTM", 0) == 1
    assert any(t.data_type == onnx.TensorProto.INT8 for t in small.graph.initializer)
    _, feeds = corpus_feeds(["Quick test."], ModelContract.from_onnx(fp32), count=1)
    a, b = _audio(fp32, feeds)[0], _audio(small, feeds)[0]
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-4
    # Weights under the threshold stay float (their scales would cost what they save).
    assert int8_weights(fp32, min_elements=10**9)[1] == {}


def test_central_range_cuts_each_tail() -> None:
    counts = np.zeros(100, np.int64)
    counts[10:90] = 100
    counts[0] = 1  # one outlier low
    counts[99] = 1  # one outlier high
    low, high = central_range(counts, -1.0, 9.0, 99.9)
    assert low == pytest.approx(-1.0 + 0.1 * 10 * 1.0, abs=0.2) or low == 0.0
    assert 7.5 < high < 8.2
    assert central_range(np.zeros(8, np.int64), 1.0, 2.0, 99.0) == (0.0, 2.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ops": "Conv,Foo"}, "unknown op type 'Foo'"),
        ({"ops": "LSTM"}, "cannot be quantized statically"),
        ({"exclude": ["re:(unclosed"]}, "not a valid regular expression"),
        ({"calib": "heldout"}, "held out"),
        ({"percentile": 50.0}, "at least 90"),
        ({"activations": "int8", "weights": "uint8"}, "not supported"),
        ({"method": "magic"}, "method"),
        ({"samples": 0}, "samples"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_settings_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message) as info:
        build_config(settings)
    assert "\n" not in str(info.value)


def test_refuses_an_already_quantized_model(synthetic_int8: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="already quantized"):
        _run(onnx.load(str(synthetic_int8)), tmp_path)


def test_bad_corpora(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        _run(fp32, tmp_path, calib=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("", "utf-8")
    with pytest.raises(CorpusError):
        _run(fp32, tmp_path, calib=str(empty))
    silent = tmp_path / "silent.txt"
    silent.write_text("...\n!!!\n", "utf-8")
    with pytest.raises(CorpusError, match="no usable sentences"):
        _run(fp32, tmp_path, calib=str(silent))


def test_nothing_to_quantize(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="Nothing to quantize"):
        _run(fp32, tmp_path, include=["*/no_such_layer/*"])


def _numpy_counts(x: np.ndarray, low: float, span: float) -> np.ndarray:
    """The histogram as the pass computed it in numpy before the bins moved into the graph."""
    bins = ((np.ravel(x) - np.float64(low)) / np.float64(span) * HISTOGRAM_BINS).astype(np.int64)
    return np.bincount(np.clip(bins, 0, HISTOGRAM_BINS - 1), minlength=HISTOGRAM_BINS)


def test_histograms_in_the_graph_equal_numpys() -> None:
    # Values on and next to bin edges, negative zeros and values outside the range: the graph's
    # float64 arithmetic must put every one in numpy's bin, or the ranges (and the model) move.
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 16, 1, 3000)) * 3).astype(np.float32)
    low, high = -2.5, 4.0
    edges = (low + np.arange(HISTOGRAM_BINS + 1) * (high - low) / HISTOGRAM_BINS).astype(np.float32)
    x.flat[: edges.size] = edges
    x.flat[edges.size : edges.size + 50] = np.float32(-0.0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    lows, spans = np.array([low, 0.0]), np.array([high - low, 3.5])
    names = _histogram_graph(model, ["x", "y"], lows, spans)
    session = _calibration_session(model.SerializeToString(), 1)
    counts = session.run(names, {"x": x})
    for i, tensor in enumerate((x, np.maximum(x, 0))):
        np.testing.assert_array_equal(counts[i], _numpy_counts(tensor, lows[i], spans[i]))
        assert counts[i].sum() == tensor.size


def test_histogram_nodes_follow_the_node_that_makes_their_tensor() -> None:
    # ORT's priority order breaks ties by node position: counting nodes appended at the end ran
    # after the whole graph, and their float64 copies piled up (3.53 GB instead of 1.52 GB for
    # one long Kokoro sample). Each chain must come right after its tensor's producer.
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["y"], name="first"),
        onnx.helper.make_node("Neg", ["y"], ["z"], name="second"),
        onnx.helper.make_node("Relu", ["z"], ["out"], name="third"),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    names = _histogram_graph(model, ["x", "z", "y"], np.zeros(3), np.ones(3))
    known = {"x"} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # still topologically sorted
        assert all(name in known for name in node.input if name), node.name
        known.update(node.output)
    order = [n.name or n.output[0] for n in model.graph.node]
    chain = len(order) // 3 - 1  # nodes per counted tensor
    assert len(order) == 3 + 3 * chain
    at = {name: order.index(name) for name in ("first", "second", "third")}
    reshapes = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type == "Reshape"]
    readers = {t: [i for i, n in reshapes if t in n.input] for t in ("x", "y", "z")}
    assert readers["x"] == [0] and at["first"] == chain
    assert readers["y"] == [at["first"] + 1] and at["second"] == at["first"] + chain + 1
    assert readers["z"] == [at["second"] + 1] and at["third"] == len(order) - 1
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    counts = _calibration_session(model.SerializeToString(), 1).run(names, {"x": x})
    assert [int(c.sum()) for c in counts] == [64, 64, 64]


def test_calibration_frees_recorded_tensors_early() -> None:
    # ORT's default order ran the recording nodes last and kept every recorded tensor alive
    # (3.7 GB instead of 0.95 GB for one long Kokoro sample); the priority order does not.
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    session = _calibration_session(model.SerializeToString(), 1)
    assert session.get_session_options().execution_order == ort.ExecutionOrder.PRIORITY_BASED
