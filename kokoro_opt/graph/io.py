"""Load and save ONNX models with clear errors, atomic writes and streamed checksums.

`load_model` turns every way a file can fail to be a model (missing, a folder, corrupt bytes,
a truncated download, a missing external-data file) into one `KokoroOptError` line.
`save_model_atomic` writes to a temporary file in the destination folder and renames it into
place, so a crash never leaves a half-written model; tensors go to an external-data file only
when the model is too large for a single protobuf (2 GB).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from kokoro_opt.errors import ModelFormatError, ModelNotFoundError

PROTOBUF_LIMIT = 2**31 - 1
"""Largest serialized ModelProto protobuf can write; bigger models need external data."""

_CHUNK = 1 << 20


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model (with its external data, if any) or raise one clear error.

    Raises `ModelNotFoundError` for a missing path and `ModelFormatError` for anything that is
    not a complete ONNX model.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"Model file not found: {path}. Pass the path of an existing .onnx file, or a cached "
            "model name (see `kokoro-opt model list`)."
        )
    if not path.is_file():
        raise ModelFormatError(f"{path} is a folder, not an ONNX model file. Pass an .onnx file.")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as exc:
        raise ModelFormatError(
            f"{path} refers to an external-data file that is missing ({exc.filename or exc}). "
            "Keep the model's .data file next to it."
        ) from None
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, OSError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        missing = re.search(r"should be stored in (.+?), but it is not regular file", reason)
        if missing:
            raise ModelFormatError(
                f"{path} refers to an external-data file that is missing ({missing.group(1)}). "
                "Keep the model's .data file next to it."
            ) from None
        raise ModelFormatError(_format_message(path, reason)) from None
    problem = _structural_problem(model)
    if problem is not None:
        raise ModelFormatError(_format_message(path, problem))
    return model


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write `model` to `path` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed to disk and renamed over
    `path`. Models larger than protobuf's 2 GB limit are written with all tensors in one
    external-data file `<name>.data` beside the model (renamed into place first).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > PROTOBUF_LIMIT:
        _save_with_external_data(model, path)
        return path
    data = model.SerializeToString()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process umask (mkstemp creates 0600 files; saved models get the usual mode)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _format_message(path: Path, reason: str) -> str:
    return (
        f"{path} is not a valid ONNX model ({reason}). The file may be corrupt or truncated: "
        "re-download or re-export it, or run `kokoro-opt model pull` again for the default models."
    )


def _structural_problem(model: onnx.ModelProto) -> str | None:
    """A cheap completeness check: what a truncated or foreign file usually lacks."""
    if model.ir_version <= 0:
        return "no IR version"
    if not model.opset_import:
        return "no opset imports"
    graph = model.graph
    if not graph.node:
        return "the graph has no nodes"
    if not graph.output:
        return "the graph has no outputs"
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.name for t in graph.sparse_initializer}
    known.add("")
    for node in graph.node:
        for name in node.input:
            if name not in known:
                return f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines"
        known.update(node.output)
    missing = [o.name for o in graph.output if o.name not in known]
    if missing:
        return f"graph output {missing[0]!r} is never produced"
    return None


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Save a >2 GB model as `<path>` + `<path>.data`, each renamed into place atomically."""
    from onnx.external_data_helper import convert_model_to_external_data

    data_name = f"{path.name}.data"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        convert_model_to_external_data(
            copy, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
        )
        onnx.save_model(copy, str(staging / path.name))
        for name in (data_name, path.name):
            with open(staging / name, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside `folder` to fill; on success it replaces `folder` (renamed into
    place), on any failure it is removed, so `folder` is never left half-written."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield stage
        if folder.exists():
            shutil.rmtree(folder)
        stage.rename(folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
