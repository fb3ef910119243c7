"""Post-training weight compression of CoreML ML programs with `coremltools.optimize.coreml`.

Modes (all weight-only: CoreML decompresses at load or on the fly, compute stays float):
- `int8`: linear symmetric int8 with one scale per output channel (iOS16+).
- `int4`: linear symmetric int4 with one scale per block of input channels (iOS18+).
- `palettize4` / `palettize6`: each weight becomes 4- or 6-bit indices into a 16- or 64-entry
  lookup table found by 1-D k-means, per tensor or per group of output channels (groups: iOS18+).
- `prune`: magnitude pruning to a target sparsity, stored as a bit mask plus the kept values.

coremltools' own k-means needs scikit-learn (and scipy); a 1-D k-means on sorted weights (Lloyd
steps with prefix sums) gives the same kind of table with numpy alone, so palettization uses it
through coremltools' `mode="custom"` hook.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from kokoro_opt.coreml.mlpackage import (
    IOS18_SPEC,
    PREDICTION_NOTE,
    SPEC_TARGETS,
    can_predict,
    check_mlpackage,
    check_output_path,
    import_coremltools,
    inspect,
    load_spec,
    save_atomic,
)
from kokoro_opt.errors import KokoroOptError, ModelFormatError, UserInputError


class Mode(str, Enum):
    int8 = "int8"
    int4 = "int4"
    palettize4 = "palettize4"
    palettize6 = "palettize6"
    prune = "prune"


MODES: tuple[str, ...] = tuple(m.value for m in Mode)
DEFAULT_MIN_ELEMENTS = 2048
INT4_BLOCK_SIZES = (16, 32, 64, 128)
KMEANS_ITERATIONS = 60


def compress(
    model: Path | str,
    out: Path | str,
    *,
    mode: Mode | str,
    block_size: int = 32,
    group_size: int | None = None,
    sparsity: float = 0.5,
    min_elements: int = DEFAULT_MIN_ELEMENTS,
) -> dict[str, Any]:
    """Compress the weights of the ML program at `model` and save it atomically to `out`.

    `block_size` applies to `int4`, `group_size` (output channels per lookup table; None = one
    table per tensor) to the palettize modes, `sparsity` to `prune`. Weights with fewer than
    `min_elements` elements stay float. Returns details: settings, before/after inspection
    summaries and the size ratio.
    """
    mode = _check_mode(mode)
    _check_options(mode, block_size=block_size, group_size=group_size, sparsity=sparsity)
    if min_elements < 1:
        raise UserInputError(
            f"min_elements must be at least 1, got {min_elements}; weights smaller than it stay "
            "float."
        )
    source = check_mlpackage(model)
    out = check_output_path(out, source=source)
    spec = load_spec(source)
    _check_target(mode, spec.specificationVersion, group_size=group_size, source=source)
    before = inspect(source)

    ct = import_coremltools()
    import coremltools.optimize.coreml as cto

    config = _op_config(
        cto,
        mode,
        block_size=block_size,
        group_size=group_size,
        sparsity=sparsity,
        min_elements=min_elements,
    )
    start = time.perf_counter()
    # coremltools draws tqdm bars on stderr; library code must not print, so keep them.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stderr(chatter):
            mlmodel = ct.models.MLModel(str(source), skip_model_load=True)
            compressed = _apply(cto, mode, mlmodel, config)
            errors = _weight_errors(cto, mlmodel, compressed, min_elements=min_elements)
            save_atomic(lambda path: compressed.save(str(path)), out)
    except KokoroOptError:
        raise
    except (ValueError, NotImplementedError, AssertionError) as exc:
        raise UserInputError(
            f"coremltools cannot compress {source} with mode {mode.value}: {_one_line(exc)}"
        ) from exc
    except Exception as exc:
        raise ModelFormatError(
            f"coremltools failed on {source} with mode {mode.value}: {_one_line(exc)}"
        ) from exc
    elapsed = time.perf_counter() - start
    after = inspect(out)
    return {
        "input": str(source),
        "output": str(out),
        "mode": mode.value,
        "settings": _settings(
            mode,
            block_size=block_size,
            group_size=group_size,
            sparsity=sparsity,
            min_elements=min_elements,
        ),
        "deployment_target": SPEC_TARGETS.get(after["specification_version"], "?"),
        "before": _summary(before),
        "after": _summary(after),
        "weight_ratio": round(after["weight_bytes"] / before["weight_bytes"], 4)
        if before["weight_bytes"]
        else None,
        "package_ratio": round(after["package_bytes"] / before["package_bytes"], 4)
        if before["package_bytes"]
        else None,
        "weight_error": errors,
        # Weights coremltools left float although they are big enough (it logs "Skipped this
        # op", e.g. an int4 block size that does not divide the input channels).
        "skipped": [
            w["name"]
            for w in after["weights"]
            if w["kind"] == "float" and w["elements"] >= min_elements
        ],
        "elapsed_s": round(elapsed, 3),
        "predictions": "available (macOS)" if can_predict() else PREDICTION_NOTE,
        "coremltools": ct.__version__,
    }


def kmeans_lut(weight: np.ndarray, *, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2**nbits-entry lookup table and uint8 indices for `weight` by 1-D k-means.

    The clusters of a 1-D k-means are contiguous runs of the sorted values, so each Lloyd step is
    a `searchsorted` of the midpoints plus prefix sums. Centres start where high-resolution
    quantization theory puts them (Panter-Dite: point density proportional to the cube root of
    the value density), which converges far better than quantile or uniform starts at 64 entries.
    """
    flat = np.asarray(weight, dtype=np.float64).reshape(-1)
    size = 1 << nbits
    values = np.sort(flat)
    n = values.size
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    hist, edges = np.histogram(values, bins=min(4096, max(64, n // 8)))
    cdf = np.concatenate([[0.0], np.cumsum(np.cbrt(hist.astype(np.float64)))])
    centres = np.unique(np.interp((np.arange(size) + 0.5) / size, cdf / cdf[-1], edges))
    for _ in range(KMEANS_ITERATIONS):
        cuts = np.searchsorted(values, (centres[1:] + centres[:-1]) / 2)
        bounds = np.concatenate([[0], cuts, [n]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        updated = np.unique(np.where(counts > 0, sums / np.maximum(counts, 1), centres))
        converged = updated.size == centres.size and np.allclose(updated, centres, rtol=0, atol=0)
        centres = updated
        if converged:
            break
    lut = np.zeros(size, dtype=np.float64)
    lut[: centres.size] = centres
    indices = np.searchsorted((centres[1:] + centres[:-1]) / 2, flat).astype(np.uint8)
    return lut.astype(weight.dtype), indices


def _weight_errors(
    cto: Any, original: Any, compressed: Any, *, min_elements: int
) -> dict[str, Any]:
    """Relative RMS error ||W' - W|| / ||W|| of every compressed weight, found by decompressing
    the new model and pairing weights through the op and parameter that consume them. Off macOS
    this is the only fidelity signal there is (no predictions)."""
    before = cto.get_weights_metadata(original, weight_threshold=min_elements)
    after = cto.get_weights_metadata(
        cto.decompress_weights(compressed), weight_threshold=min_elements
    )

    def by_use(meta: dict[str, Any]) -> dict[tuple[str, str], np.ndarray]:
        found = {}
        for name, weight in meta.items():
            for child in weight.child_ops:
                for param, arg in child.params_name_mapping.items():
                    if arg == name:
                        found[(child.name, param)] = weight.val
        return found

    old, new = by_use(before), by_use(after)
    errors = {}
    for key, ref in old.items():
        got = new.get(key)
        if got is None or got.shape != ref.shape:
            continue
        ref64 = np.asarray(ref, dtype=np.float64)
        norm = float(np.linalg.norm(ref64))
        if norm > 0:
            errors[f"{key[0]}.{key[1]}"] = float(np.linalg.norm(got - ref64)) / norm
    values = list(errors.values())
    return {
        "weights": len(values),
        "mean_relative_rms": round(float(np.mean(values)), 6) if values else None,
        "max_relative_rms": round(float(np.max(values)), 6) if values else None,
        "worst": max(errors, key=errors.__getitem__) if errors else None,
    }


def _check_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise UserInputError(
            f"Unknown compression mode '{mode}'. Allowed: {', '.join(MODES)}."
        ) from None


def _check_options(mode: Mode, *, block_size: int, group_size: int | None, sparsity: float) -> None:
    if block_size not in INT4_BLOCK_SIZES:
        raise UserInputError(
            f"block_size {block_size} is not supported; use one of "
            f"{', '.join(map(str, INT4_BLOCK_SIZES))} (input channels per int4 scale)."
        )
    if group_size is not None and group_size < 1:
        raise UserInputError(
            f"group_size must be a positive number of output channels, got {group_size}; leave "
            "it out for one lookup table per tensor."
        )
    if group_size is not None and mode not in (Mode.palettize4, Mode.palettize6):
        raise UserInputError(
            f"group_size applies to the palettize modes only, not {mode.value}; drop it."
        )
    if not 0.0 < sparsity < 1.0:
        raise UserInputError(
            f"sparsity must be between 0 and 1 (the fraction of weights set to zero), got "
            f"{sparsity}; 0.5 is a common start."
        )


def _check_target(mode: Mode, spec_version: int, *, group_size: int | None, source: Path) -> None:
    target = SPEC_TARGETS.get(spec_version, f"spec {spec_version}")
    needs = None
    if mode is Mode.int4:
        needs = "int4 (blockwise) quantization"
    elif group_size is not None:
        needs = "per-group palettization (group_size)"
    if needs and spec_version < IOS18_SPEC:
        raise UserInputError(
            f"{needs} needs an ML program with minimum deployment target iOS18/macOS15; "
            f"{source} targets {target}. Re-convert it with "
            "minimum_deployment_target=ct.target.iOS18, or use int8 / per-tensor palettization."
        )


def _op_config(
    cto: Any,
    mode: Mode,
    *,
    block_size: int,
    group_size: int | None,
    sparsity: float,
    min_elements: int,
) -> Any:
    if mode is Mode.int8:
        op = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity="per_channel",
            weight_threshold=min_elements,
        )
    elif mode is Mode.int4:
        op = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int4",
            granularity="per_block",
            block_size=block_size,
            weight_threshold=min_elements,
        )
    elif mode in (Mode.palettize4, Mode.palettize6):
        nbits = 4 if mode is Mode.palettize4 else 6
        grouping: dict[str, Any] = (
            {"granularity": "per_grouped_channel", "group_size": group_size}
            if group_size is not None
            else {"granularity": "per_tensor"}
        )
        op = cto.OpPalettizerConfig(
            mode="custom",
            lut_function=functools.partial(kmeans_lut, nbits=nbits),
            weight_threshold=min_elements,
            **grouping,
        )
    else:
        op = cto.OpMagnitudePrunerConfig(target_sparsity=sparsity, weight_threshold=min_elements)
    return cto.OptimizationConfig(global_config=op)


def _apply(cto: Any, mode: Mode, mlmodel: Any, config: Any) -> Any:
    if mode in (Mode.int8, Mode.int4):
        return cto.linear_quantize_weights(mlmodel, config)
    if mode in (Mode.palettize4, Mode.palettize6):
        return cto.palettize_weights(mlmodel, config)
    return cto.prune_weights(mlmodel, config)


def _settings(
    mode: Mode,
    *,
    block_size: int,
    group_size: int | None,
    sparsity: float,
    min_elements: int,
) -> dict[str, Any]:
    settings: dict[str, Any] = {"min_elements": min_elements}
    if mode is Mode.int8:
        settings.update(dtype="int8", granularity="per_channel", symmetric=True)
    elif mode is Mode.int4:
        settings.update(dtype="int4", granularity="per_block", block_size=block_size)
    elif mode in (Mode.palettize4, Mode.palettize6):
        settings.update(
            nbits=4 if mode is Mode.palettize4 else 6,
            lut="kmeans-1d",
            granularity="per_tensor" if group_size is None else "per_grouped_channel",
            group_size=group_size,
        )
    else:
        settings.update(method="magnitude", sparsity=sparsity)
    return settings


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "package_bytes": info["package_bytes"],
        "weights_file_bytes": info["weights_file_bytes"],
        "weight_bytes": info["weight_bytes"],
        "weight_count": info["weight_count"],
        "compute_ops": info["compute_ops"],
        "weights_by_dtype": info["weights_by_dtype"],
        "compressed_fraction": info["compressed_fraction"],
        "specification_version": info["specification_version"],
    }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
