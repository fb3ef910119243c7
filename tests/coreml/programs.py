"""Small CoreML ML programs built with coremltools' MIL builder (real-sized 256x256 weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kokoro_opt.coreml.mlpackage import import_coremltools


def build_mlpackage(path: Path, *, target: str = "iOS18", seed: int = 0) -> Path:
    """Two linear layers (256x256) and a conv (64x32x3) with float32 weights, plus a small bias
    that stays under the compression threshold; saved as an .mlpackage at `path`."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    w2 = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    wc = (rng.standard_normal((64, 32, 3)) / 10).astype(np.float32)
    bias = rng.standard_normal(256).astype(np.float32)
    opset = getattr(ct.target, target)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 256)), mb.TensorSpec(shape=(1, 32, 100))],
        opset_version=opset,
    )
    def prog(x, y):  # type: ignore[no-untyped-def]
        h = mb.relu(x=mb.linear(x=x, weight=w1, bias=bias))
        h = mb.linear(x=h, weight=w2)
        c = mb.conv(x=y, weight=wc, pad_type="same")
        return h, c

    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=opset,
        compute_precision=ct.precision.FLOAT32,
    )
    model.save(str(path))
    return path


def original_weights(path: Path) -> dict[str, np.ndarray]:
    """Dense float weights keyed by the op that consumes them ("linear_0.weight")."""
    return _weights_by_use(path)


def decompressed_weights(path: Path) -> dict[str, np.ndarray]:
    return _weights_by_use(path, decompress=True)


def _weights_by_use(path: Path, *, decompress: bool = False) -> dict[str, np.ndarray]:
    ct = import_coremltools()
    import coremltools.optimize.coreml as cto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    if decompress:
        model = cto.decompress_weights(model)
    found = {}
    for name, meta in cto.get_weights_metadata(model, weight_threshold=1000).items():
        for child in meta.child_ops:
            for param, arg in child.params_name_mapping.items():
                if arg == name:
                    found[f"{child.name}.{param}"] = np.asarray(meta.val, dtype=np.float64)
    return found
