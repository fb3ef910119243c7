"""Reading and writing CoreML ML programs (.mlpackage folders) without running them.

coremltools on Linux can load a model's spec, rewrite its weights and save it again, but it
cannot run predictions (that needs the CoreML framework, i.e. macOS). Everything here works from
the spec protobuf and the files on disk: op counts, stored weight dtypes and their sizes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kokoro_opt.errors import ModelFormatError, ModelNotFoundError, UserInputError

PREDICTION_NOTE = (
    "CoreML predictions need macOS; on this platform kokoro-opt reports sizes and op counts only."
)

# MIL spec versions (Model.specificationVersion) and the deployment targets they mean.
SPEC_TARGETS: dict[int, str] = {
    4: "iOS13",
    5: "iOS14",
    6: "iOS15",
    7: "iOS16",
    8: "iOS17",
    9: "iOS18",
    10: "iOS26",
}
IOS18_SPEC = 9

# Bits per element of each MIL DataType name, for the size of what is stored.
_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "FLOAT8E4M3FN": 8,
    "FLOAT8E5M2": 8,
    "FLOAT16": 16,
    "BFLOAT16": 16,
    "FLOAT32": 32,
    "FLOAT64": 64,
    "INT4": 4,
    "INT8": 8,
    "INT16": 16,
    "INT32": 32,
    "INT64": 64,
    "UINT1": 1,
    "UINT2": 2,
    "UINT3": 3,
    "UINT4": 4,
    "UINT6": 6,
    "UINT8": 8,
    "UINT16": 16,
    "UINT32": 32,
    "UINT64": 64,
}

# Ops that hold weights, and what kind of compression each one means.
_WEIGHT_KINDS: dict[str, str] = {
    "const": "float",
    "constexpr_affine_dequantize": "linear",
    "constexpr_blockwise_shift_scale": "linear",
    "constexpr_lut_to_dense": "palettized",
    "constexpr_sparse_to_dense": "sparse",
    "constexpr_cast": "cast",
}
# The component of each compressed weight that holds one entry per weight element.
_MAIN_COMPONENT: dict[str, tuple[str, ...]] = {
    "constexpr_affine_dequantize": ("quantized_data",),
    "constexpr_blockwise_shift_scale": ("data",),
    "constexpr_lut_to_dense": ("indices",),
    "constexpr_sparse_to_dense": ("mask", "nonzero_data"),
    "constexpr_cast": ("source_val",),
    "const": ("val",),
}


def import_coremltools() -> Any:
    """Import coremltools quietly: off macOS it logs a warning per missing native proxy."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


def check_mlpackage(path: Path | str) -> Path:
    """Return `path` if it is an .mlpackage folder, else raise a clear error."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(
            f"No CoreML model at {path}. Pass the path of an .mlpackage folder saved by "
            "coremltools."
        )
    if not path.is_dir() or path.suffix != ".mlpackage":
        kind = "a folder" if path.is_dir() else "a file"
        hint = " For ONNX models use `kokoro-opt int4`." if path.suffix == ".onnx" else ""
        raise ModelFormatError(
            f"{path} is {kind}, not an .mlpackage folder: kokoro-opt coreml works on CoreML ML "
            f"programs saved as .mlpackage by coremltools.{hint}"
        )
    if not (path / "Manifest.json").is_file():
        raise ModelFormatError(
            f"{path} has no Manifest.json, so it is not a complete .mlpackage: save the model "
            "again with coremltools (MLModel.save('model.mlpackage'))."
        )
    return path


def load_spec(path: Path | str) -> Any:
    """The model's spec protobuf; raises `ModelFormatError` for a corrupt package or a non ML
    program (the weight-compression tools work on ML programs only)."""
    path = check_mlpackage(path)
    ct = import_coremltools()
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:  # coremltools raises bare Exceptions and protobuf DecodeErrors
        raise ModelFormatError(
            f"Cannot read the CoreML model in {path} ({_one_line(exc)}). Save it again with "
            "coremltools."
        ) from exc
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise ModelFormatError(
            f"{path} holds a CoreML '{kind}' model; weight compression needs an ML program. "
            "Convert it with coremltools convert_to='mlprogram'."
        )
    return spec


def inspect(path: Path | str) -> dict[str, Any]:
    """Describe an .mlpackage: ops, inputs/outputs, every weight's stored dtype and size."""
    path = Path(path)
    spec = load_spec(path)
    from coremltools.proto import MIL_pb2

    dtype_names = {value: name for name, value in MIL_pb2.DataType.items()}
    program = spec.mlProgram
    ops: Counter[str] = Counter()
    entries: dict[str, dict[str, Any]] = {}
    consumers: dict[str, list[str]] = {}
    for function in program.functions.values():
        block = function.block_specializations[function.opset]
        for op in _walk_ops(block):
            ops[op.type] += 1
            for binding in op.inputs.values():
                for arg in binding.arguments:
                    if arg.WhichOneof("binding") == "name":
                        consumers.setdefault(arg.name, []).append(op.type)
            if op.type in _WEIGHT_KINDS:
                entry = _weight_entry(op, dtype_names)
                if entry is not None:
                    entries[entry["name"]] = entry
    weights = _fold_chains(entries, consumers)
    by_dtype: dict[str, dict[str, int]] = {}
    for weight in weights:
        row = by_dtype.setdefault(weight["dtype"], {"count": 0, "elements": 0, "bytes": 0})
        row["count"] += 1
        row["elements"] += weight["elements"]
        row["bytes"] += weight["bytes"]
    weight_bytes = sum(w["bytes"] for w in weights)
    compressed = sum(w["elements"] for w in weights if w["kind"] not in ("float", "cast"))
    elements = sum(w["elements"] for w in weights)
    version = spec.specificationVersion
    return {
        "path": str(path),
        "format": "mlprogram",
        "specification_version": version,
        "deployment_target": SPEC_TARGETS.get(version, f"spec {version}"),
        "functions": list(program.functions.keys()),
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "op_counts": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "compute_ops": sum(n for t, n in ops.items() if t != "const" and t not in _WEIGHT_KINDS),
        "weights": sorted(weights, key=lambda w: -w["bytes"]),
        "weights_by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
        "weight_count": len(weights),
        "weight_elements": elements,
        "weight_bytes": weight_bytes,
        "compressed_fraction": round(compressed / elements, 4) if elements else 0.0,
        "package_bytes": tree_size(path),
        "weights_file_bytes": sum(
            p.stat().st_size for p in path.rglob("*") if p.is_file() and p.parent.name == "weights"
        ),
        "predictions": PREDICTION_NOTE if not can_predict() else "available (macOS)",
    }


def can_predict() -> bool:
    """CoreML predictions run only where the CoreML framework is (macOS)."""
    import sys

    return sys.platform == "darwin"


def tree_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_sha256(path: Path) -> str:
    """A sha256 over the relative paths and contents of every file in a folder, in order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_output_path(out: Path | str, *, source: Path | None = None) -> Path:
    """Validate an output .mlpackage path before any work is done."""
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise UserInputError(
            f"Output {out} must end in .mlpackage (CoreML saves ML programs as .mlpackage "
            "folders). Pass something like -o model-int8.mlpackage."
        )
    if source is not None and out.resolve() == Path(source).resolve():
        raise UserInputError(
            f"Output {out} is the input model; write the compressed model to a new path."
        )
    if out.exists() and not (out.is_dir() and (out / "Manifest.json").is_file()):
        raise UserInputError(
            f"Output {out} exists and is not an .mlpackage; refusing to replace it. Choose "
            "another output path or remove it first."
        )
    return out


def save_atomic(save: Callable[[Path], None], out: Path) -> Path:
    """Write a package folder atomically: `save(tmp_path)` in a temp folder beside `out`, then
    rename it into place (an existing package at `out` is replaced only after the new one is
    complete). A failure leaves `out` as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        built = staging / out.name
        save(built)
        if not (built / "Manifest.json").is_file():
            raise ModelFormatError(f"coremltools did not write a complete package for {out}.")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(built, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _walk_ops(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def _dims(value_type: Any) -> list[int]:
    return [int(d.constant.size) for d in value_type.tensorType.dimensions]


def _component(value: Any, dtype_names: dict[int, str]) -> dict[str, Any] | None:
    """Stored dtype, shape and bytes of one tensor value, or None for non-tensor values."""
    if value.type.WhichOneof("type") != "tensorType":
        return None
    dtype = dtype_names.get(value.type.tensorType.dataType, "UNKNOWN")
    shape = _dims(value.type)
    elements = 1
    for d in shape:
        elements *= d
    bits = _DTYPE_BITS.get(dtype, 0)
    return {
        "dtype": dtype.lower(),
        "shape": shape,
        "elements": elements,
        "bytes": (elements * bits + 7) // 8,
        "in_file": value.WhichOneof("value") == "blobFileValue",
    }


def _weight_entry(op: Any, dtype_names: dict[int, str]) -> dict[str, Any] | None:
    """One weight: its stored components (from attributes, or inline input values) and sizes."""
    components: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    for key, value in op.attributes.items():
        if key == "name":
            continue
        comp = _component(value, dtype_names)
        if comp is not None:
            components[key] = comp
    for key, binding in op.inputs.items():
        for arg in binding.arguments:
            which = arg.WhichOneof("binding")
            if which == "value":
                comp = _component(arg.value, dtype_names)
                if comp is not None:
                    components[key] = comp
            elif which == "name":
                sources.append(arg.name)
    if op.type == "const":
        val = components.get("val")
        # Only tensors stored in the weight file are weights; small immediates are op settings.
        if val is None or not val["in_file"]:
            return None
    out = op.outputs[0]
    shape = _dims(out.type)
    elements = 1
    for d in shape:
        elements *= d
    _unpack_ios16(op.type, components, elements)
    main = [components[k]["dtype"] for k in _MAIN_COMPONENT.get(op.type, ()) if k in components]
    return {
        "name": out.name,
        "op": op.type,
        "kind": _WEIGHT_KINDS[op.type],
        "dtype": "+".join(main) if main else "?",
        "shape": shape,
        "elements": elements,
        "bytes": sum(c["bytes"] for c in components.values()),
        "components": {
            k: {"dtype": c["dtype"], "shape": c["shape"]} for k, c in components.items()
        },
        "sources": sources,
    }


def _unpack_ios16(op_type: str, components: dict[str, dict[str, Any]], elements: int) -> None:
    """iOS16 constexpr ops store n-bit indices and 1-bit masks packed into uint8 bytes; name
    them by the bits per weight they really hold (the byte counts stay as stored)."""
    if op_type == "constexpr_lut_to_dense" and {"indices", "lut"} <= components.keys():
        indices, lut = components["indices"], components["lut"]
        if indices["dtype"] == "uint8" and indices["elements"] < elements and lut["shape"]:
            entries = lut["shape"][-1] if len(lut["shape"]) == 1 else lut["shape"][-2]
            indices["dtype"] = f"uint{max(1, (entries - 1).bit_length())}"
    if op_type == "constexpr_sparse_to_dense" and "mask" in components:
        mask = components["mask"]
        if mask["dtype"] == "uint8" and mask["elements"] < elements:
            mask["dtype"] = "uint1"


def _fold_chains(
    entries: dict[str, dict[str, Any]], consumers: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Merge weights whose only consumers are other constexpr ops (joint compression such as
    sparse + palettized) into the weight they feed, so each dense weight is listed once."""
    folded: set[str] = set()
    for entry in entries.values():
        for source in entry["sources"]:
            inner = entries.get(source)
            if inner is None:
                continue
            entry["bytes"] += inner["bytes"]
            entry["kind"] = f"{inner['kind']}+{entry['kind']}"
            entry["dtype"] = inner["dtype"] if entry["dtype"] == "?" else entry["dtype"]
            for key, comp in inner["components"].items():
                entry["components"][f"{source}.{key}"] = comp
            folded.add(source)
    weights = []
    for name, entry in entries.items():
        if name in folded:
            continue
        entry = dict(entry)
        entry.pop("sources")
        entry["used_by"] = sorted(set(consumers.get(name, [])))
        weights.append(entry)
    return weights


def _feature(feature: Any) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    info: dict[str, Any] = {"name": feature.name, "type": kind}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        info["shape"] = [int(s) for s in array.shape]
        info["dtype"] = type(array).ArrayDataType.Name(array.dataType).lower()
    return info


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
