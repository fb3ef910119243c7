"""The durations pass: Kokoro's per-token durations exposed as an output, found structurally."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from kokoro_opt.errors import ModelFormatError
from kokoro_opt.graph.durations import DURATION_OUTPUT, find_duration_tensor
from kokoro_opt.passes import durations
from kokoro_opt.passes.base import PassContext
from kokoro_opt.passes.static_shapes import Config as StaticConfig
from kokoro_opt.passes.static_shapes import run as bind_static
from tests.passes.graphs import aligner_feeds, aligner_model, plain_model, run


def test_adds_the_tensor_that_feeds_the_alignment() -> None:
    model = aligner_model()
    result = durations.run(model, durations.Config())
    assert result.details == {"durations": "durations", "source": "d", "added": True}
    assert [o.name for o in model.graph.output] == ["audio"]  # input untouched
    feeds = aligner_feeds(12)
    audio, dur = run(result.model, feeds)
    (reference,) = run(model, feeds)
    np.testing.assert_array_equal(audio, reference)  # the audio is unchanged
    assert dur.dtype == np.int64 and dur.shape == (14,)  # one per token, both pads included
    assert int(dur.sum()) == audio.size and dur.min() >= 1


def test_a_model_with_durations_is_used_as_it_is() -> None:
    once = durations.run(aligner_model()).model
    again = durations.run(once)
    assert again.details["added"] is False and again.model is once
    assert [o.name for o in again.model.graph.output].count(DURATION_OUTPUT) == 1


def test_found_through_static_shape_length_masking() -> None:
    """Pinned/bucketed graphs multiply the clipped durations by a length mask: still found, and
    the pads beyond the text get zero frames."""
    bound = bind_static(aligner_model(), StaticConfig(tokens=24), PassContext()).model
    result = durations.run(bound)
    feeds = aligner_feeds(10, pad_to=24)
    audio, dur = run(result.model, feeds)
    assert dur.shape == (24,) and int(dur[12:].sum()) == 0
    assert int(dur.sum()) == audio.size


def test_graph_without_a_duration_predictor_is_a_one_line_error() -> None:
    model, _ = plain_model()
    with pytest.raises(ModelFormatError, match="Cannot find Kokoro's duration predictor") as err:
        durations.run(model)
    assert "\n" not in str(err.value)


def test_two_candidate_chains_are_refused() -> None:
    model = aligner_model()
    extra = onnx.helper.make_node("CumSum", ["d", "i0"], ["cum_again"])
    model.graph.node.append(extra)
    assert find_duration_tensor(model) == "d"  # the same tensor twice is still one chain
    model.graph.node.append(onnx.helper.make_node("Cast", ["d"], ["d2"], to=7))
    model.graph.node.append(onnx.helper.make_node("CumSum", ["d2", "i0"], ["cum2"]))
    with pytest.raises(ModelFormatError, match="2 CumSum"):
        find_duration_tensor(model)


def test_found_after_int4() -> None:
    """INT4 (MatMulNBits, GatherBlockQuantized, Conv weights through DequantizeLinear) leaves
    the duration chain alone: it is found and its output accounts for every frame."""
    from kokoro_opt.passes import int4

    quantized = int4.run(
        aligner_model(), int4.Config(conv=True, gather=True, min_elements=1), PassContext()
    ).model
    assert {"MatMulNBits", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    result = durations.run(quantized)
    audio, dur = run(result.model, aligner_feeds(9))
    assert dur.shape == (11,) and int(dur.sum()) == audio.size
