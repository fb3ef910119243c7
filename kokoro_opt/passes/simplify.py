"""onnxsim simplification: constant folding, shape inference and dead-node removal.

onnxsim also merges duplicated weights and fuses MatMul + Add into Gemm. When onnxsim cannot
handle the model (an op it has no schema or kernel for, a crash inside its C++ core, or its
own output check failing) the pass does not fail the pipeline: it returns the input unchanged
and says why in `details["skipped"]`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import onnx
from pydantic import Field

from kokoro_opt.errors import UserInputError
from kokoro_opt.graph.edit import clone, model_size_bytes, op_counts
from kokoro_opt.passes.base import PassConfig, PassContext, PassResult

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOT_FOLDED = re.compile(r'failed to run "(\w+)" op')


class Config(PassConfig):
    constant_folding: bool = True
    """Replace subgraphs whose inputs are all constants with their computed values."""
    shape_inference: bool = True
    """Run ONNX shape inference so later passes and runtimes see static shapes where known."""
    optimizations: bool = True
    """Run onnx-optimizer's fusions and eliminations (fuse MatMul+Add, drop no-op nodes ...)."""
    skip_optimizers: list[str] = Field(default_factory=list)
    """onnx-optimizer passes to leave out, e.g. `fuse_matmul_add_bias_into_gemm`."""
    input_shapes: dict[str, list[int]] | None = None
    """Replace these graph inputs' shapes (static binding) before simplifying."""
    check_n: int = Field(default=0, ge=0, le=20)
    """How many random-input runs onnxsim uses to check its own output (0: none)."""


def run(model: onnx.ModelProto, config: Config, ctx: PassContext) -> PassResult:
    """Simplify a copy of `model`; on failure return the copy unchanged with the reason."""
    work = clone(model)
    before = op_counts(work)
    size_before = model_size_bytes(work)
    details: dict[str, Any] = {
        "applied": False,
        "nodes_before": len(work.graph.node),
        "size_before": size_before,
    }
    if config.input_shapes:
        _check_input_shapes(work, config.input_shapes)
    ctx.report("simplify (onnxsim)", 0, 1)
    messages: list[str] = []
    try:
        import onnxsim

        with _captured_output(messages):
            simplified, ok = onnxsim.simplify(
                work,
                check_n=config.check_n,
                perform_optimization=config.optimizations,
                skipped_optimizers=list(config.skip_optimizers) or None,
                skip_constant_folding=not config.constant_folding,
                skip_shape_inference=not config.shape_inference,
                overwrite_input_shapes=config.input_shapes or None,
            )
    except Exception as exc:  # onnxsim raises bare RuntimeError/ValueError from its C++ core
        reason = _first_line(exc)
        logger.info("onnxsim skipped: %s", reason)
        details["skipped"] = f"onnxsim could not simplify this model: {reason}"
        details["nodes_after"] = details["nodes_before"]
        details["messages"] = _summarize(messages)
        ctx.report("simplify (onnxsim)", 1, 1)
        return PassResult(work, details)
    ctx.report("simplify (onnxsim)", 1, 1)
    if not ok:
        details["skipped"] = (
            "onnxsim's own check found different outputs after simplifying; kept the input"
        )
        details["nodes_after"] = details["nodes_before"]
        return PassResult(work, details)
    after = op_counts(simplified)
    details.update(
        applied=True,
        nodes_after=len(simplified.graph.node),
        size_after=model_size_bytes(simplified),
        op_changes={
            op: after.get(op, 0) - before.get(op, 0)
            for op in sorted(set(before) | set(after))
            if after.get(op, 0) != before.get(op, 0)
        },
        onnxsim_version=_version(),
        messages=_summarize(messages),
        nodes_not_folded=sorted(set(_NOT_FOLDED.findall("\n".join(messages)))),
    )
    return PassResult(simplified, details)


@contextlib.contextmanager
def _captured_output(sink: list[str]) -> Iterator[None]:
    """Collect what onnxsim (and the ORT session it folds constants with) writes to the
    process's stdout/stderr, at the file-descriptor level, so a pass never prints."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as capture:
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            sink.extend(line for line in text.splitlines() if line.strip())


def _summarize(messages: list[str], limit: int = 20) -> list[str]:
    """onnxsim's warnings without tracebacks and ANSI colours, at most `limit` lines."""
    keep = []
    for line in messages:
        clean = _ANSI.sub("", line).strip()
        if clean.startswith(("WARNING", "Warning", "[E:", "[W:")) or "skip" in clean:
            keep.append(clean[:300])
    return keep[:limit]


def _check_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    names = {i.name for i in model.graph.input}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise UserInputError(
            f"input_shapes names {', '.join(unknown)}, which the model does not have; "
            f"its inputs are {', '.join(sorted(names))}."
        )
    for name, dims in shapes.items():
        if any(int(d) < 1 for d in dims):
            raise UserInputError(
                f"input_shapes[{name!r}] = {dims}: every dimension must be a whole number >= 1."
            )


def _version() -> str:
    try:
        import onnxsim

        return str(getattr(onnxsim, "__version__", "unknown"))
    except Exception:  # pragma: no cover - onnxsim is a declared dependency
        return "unavailable"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
