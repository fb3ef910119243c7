"""Binding a split model's back graphs to one window size (passes.static_window)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from kokoro_opt.errors import UserInputError
from kokoro_opt.graph.edit import inferred_shapes
from kokoro_opt.passes import split as split_pass
from kokoro_opt.passes import static_window
from kokoro_opt.passes.base import PassContext
from kokoro_opt.runtime.session import create_session
from tests.passes.split_graphs import kokoro_anatomy_model


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = split_pass.split(kokoro_anatomy_model(), split_pass.Config(), PassContext(threads=1))
    return split_pass.save(models, tmp_path_factory.mktemp("window") / "dynamic")


@pytest.fixture(scope="module")
def bound(dynamic: Path) -> static_window.BoundSplit:
    out = dynamic.parent / "w8"
    return static_window.bind_split(dynamic, out, frames=8, ctx=PassContext(threads=1))


def test_every_shape_of_the_bound_graphs_is_static(
    dynamic: Path, bound: static_window.BoundSplit
) -> None:
    meta = json.loads((dynamic / "split.json").read_text())
    assert set(bound.graphs) == {"back.onnx", "generator.onnx"}
    for name, details in bound.graphs.items():
        model = onnx.load(str(bound.folder / name))
        context = bound.window["context"][name]
        span = 8 + 1 + 2 * context
        assert details["span"] == span == bound.window["span"][name]
        shapes = inferred_shapes(model)
        for vi in model.graph.input:
            dims = shapes[vi.name]
            assert all(isinstance(d, int) and d > 0 for d in dims), (name, vi.name, dims)
            if vi.name in meta["tensors"]:
                info = meta["tensors"][vi.name]
                assert dims[info["axis"]] == span * info["rate"]
        produced = [o for n in model.graph.node for o in n.output if o]
        assert all(all(isinstance(d, int) for d in shapes[t]) for t in produced)
        assert details["static_tensors"] == details["tensors"] == len(produced)
        (out,) = model.graph.output
        assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [
            span * meta["samples_per_frame"]
        ]


def test_bound_graphs_compute_what_the_dynamic_ones_compute(
    dynamic: Path, bound: static_window.BoundSplit
) -> None:
    for name, details in bound.graphs.items():
        assert details["check"]["same_length"] and details["check"]["windows"] == 3
        assert details["check"]["max_abs_diff"] <= 1e-5
        feeds = static_window.window_feeds(dynamic, name, bound.configs[name])
        dyn = create_session(dynamic / name, threads=1)
        static = create_session(bound.folder / name, threads=1)
        for f in feeds:
            (a,) = dyn.run(None, f)
            (b,) = static.run(None, f)
            assert a.shape == b.shape
            assert float(np.abs(a - b).max()) <= 1e-5


def test_the_bound_folder_records_its_window(
    dynamic: Path, bound: static_window.BoundSplit
) -> None:
    meta = json.loads((bound.folder / "split.json").read_text())
    assert meta["window"]["frames"] == 8 and meta["window"]["overlap"] == 1
    assert meta["window"]["context"]["back.onnx"] == int(np.ceil(meta["receptive_field_frames"]))
    assert sorted(p.name for p in bound.folder.glob("*.onnx")) == sorted(
        p.name for p in dynamic.glob("*.onnx")
    )
    # the front and the decoder stay as they were
    front = onnx.load(str(bound.folder / "front.onnx"))
    assert front.SerializeToString() == onnx.load(str(dynamic / "front.onnx")).SerializeToString()


@pytest.mark.parametrize("frames", [0, -3, static_window.MAX_FRAMES + 1])
def test_a_bad_window_size_is_refused(dynamic: Path, tmp_path: Path, frames: int) -> None:
    with pytest.raises(UserInputError, match=r"^A window holds 1 to 2048 frames") as err:
        static_window.bind_split(dynamic, tmp_path / "x", frames=frames, ctx=PassContext())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_a_bound_or_missing_split_folder_is_refused(
    bound: static_window.BoundSplit, tmp_path: Path
) -> None:
    with pytest.raises(UserInputError, match="already bound to 8-frame windows"):
        static_window.bind_split(bound.folder, tmp_path / "x", frames=8, ctx=PassContext())
    with pytest.raises(UserInputError, match="is not a split folder"):
        static_window.bind_split(tmp_path, tmp_path / "x", frames=8, ctx=PassContext())


def test_every_input_needs_a_shape(dynamic: Path, bound: static_window.BoundSplit) -> None:
    config = bound.configs["back.onnx"]
    partial = config.model_copy(
        update={"inputs": {k: v for k, v in config.inputs.items() if k != "style"}}
    )
    with pytest.raises(UserInputError, match="No shape given for input"):
        static_window.run(onnx.load(str(dynamic / "back.onnx")), partial, PassContext())
