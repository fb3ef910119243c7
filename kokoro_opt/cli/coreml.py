"""`kokoro-opt coreml`: compress and inspect CoreML ML programs (.mlpackage folders)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kokoro_opt.cli.console import console, err_console

app = typer.Typer(
    help="Compress and inspect CoreML ML programs (.mlpackage) for people who already have a "
    "CoreML Kokoro model. Off macOS this reports sizes and op counts only.",
    no_args_is_help=True,
)

MODE_HELP = (
    "How to compress the weights: int8 (per-channel linear), int4 (per-block linear, iOS18+), "
    "palettize4 / palettize6 (16- or 64-entry k-means lookup tables) or prune (magnitude "
    "sparsity)."
)


@app.command("compress")
def compress_command(
    model: Annotated[Path, typer.Argument(help="The .mlpackage folder to compress.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .mlpackage folder to write.")],
    mode: Annotated[str, typer.Option(help=MODE_HELP)] = "int8",
    block_size: Annotated[
        int, typer.Option(help="Input channels per scale for --mode int4: 16, 32, 64 or 128.")
    ] = 32,
    group_size: Annotated[
        int | None,
        typer.Option(
            help="Output channels per lookup table for the palettize modes (iOS18+); leave it "
            "out for one table per weight tensor."
        ),
    ] = None,
    sparsity: Annotated[
        float, typer.Option(help="Fraction of weights set to zero for --mode prune, in (0, 1).")
    ] = 0.5,
    min_elements: Annotated[
        int, typer.Option(help="Weights with fewer elements than this stay float.")
    ] = 2048,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of a table.")
    ] = False,
) -> None:
    """Compress the weights of MODEL and write OUTPUT atomically, with OUTPUT.json beside it."""
    from kokoro_opt.coreml import compress
    from kokoro_opt.coreml.mlpackage import tree_sha256

    with err_console.status(f"Compressing {model.name} ({mode}) ..."):
        start = time.perf_counter()
        details = compress(
            model,
            output,
            mode=mode,
            block_size=block_size,
            group_size=group_size,
            sparsity=sparsity,
            min_elements=min_elements,
        )
        elapsed = time.perf_counter() - start
    manifest = {
        "command": "coreml compress",
        "input_sha256": tree_sha256(Path(details["input"])),
        "output_sha256": tree_sha256(Path(details["output"])),
        "elapsed_s": round(elapsed, 3),
        "versions": _versions(),
        **details,
    }
    _write_json_atomic(output.with_name(output.name + ".json"), manifest)
    if json_output:
        console.print_json(json.dumps(manifest))
        return
    before, after = details["before"], details["after"]
    table = Table(title=f"{model.name} -> {output.name} ({mode})", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("package", _mb(before["package_bytes"]), _mb(after["package_bytes"]))
    table.add_row("weights", _mb(before["weight_bytes"]), _mb(after["weight_bytes"]))
    table.add_row(
        "compressed weights",
        f"{before['compressed_fraction']:.0%}",
        f"{after['compressed_fraction']:.0%}",
    )
    table.add_row("weight dtypes", _dtypes(before), _dtypes(after))
    table.add_row("compute ops", str(before["compute_ops"]), str(after["compute_ops"]))
    console.print(table)
    err = details["weight_error"]
    if err["weights"]:
        console.print(
            f"Weight error (relative RMS): mean {err['mean_relative_rms']:.4f}, "
            f"max {err['max_relative_rms']:.4f} ({err['worst']}) over {err['weights']} weights."
        )
    console.print(f"Size ratio {details['weight_ratio']:.3f} (weights). Wrote {output}.")
    if details["predictions"] != "available (macOS)":
        err_console.print(f"[dim]{details['predictions']}[/]")


@app.command("inspect")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="The .mlpackage folder to describe.")],
    top: Annotated[
        int, typer.Option(help="How many of the largest weights to list in the table.")
    ] = 10,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print everything (every weight) as JSON.")
    ] = False,
) -> None:
    """List MODEL's ops, its weights' stored dtypes and sizes, inputs and outputs."""
    from kokoro_opt.coreml import inspect

    info = inspect(model)
    if json_output:
        console.print_json(json.dumps(info))
        return
    console.print(
        f"[bold]{model.name}[/]: ML program, {info['deployment_target']} "
        f"(spec {info['specification_version']}), {_mb(info['package_bytes'])} on disk, "
        f"{info['compute_ops']} compute ops, {info['weight_count']} weights "
        f"({info['weight_elements']:,} values, {info['compressed_fraction']:.0%} compressed)."
    )
    io_table = Table(title="Inputs and outputs", title_justify="left")
    for col in ("", "name", "shape", "dtype"):
        io_table.add_column(col)
    for role, features in (("in", info["inputs"]), ("out", info["outputs"])):
        for f in features:
            io_table.add_row(role, f["name"], str(f.get("shape", "")), f.get("dtype", f["type"]))
    console.print(io_table)
    ops = Table(title="Ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["op_counts"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    dtypes = Table(title="Weights by stored dtype", title_justify="left")
    for col, just in (
        ("dtype", "left"),
        ("weights", "right"),
        ("values", "right"),
        ("size", "right"),
    ):
        dtypes.add_column(col, justify=just)  # type: ignore[arg-type]
    for dtype, row in info["weights_by_dtype"].items():
        dtypes.add_row(dtype, str(row["count"]), f"{row['elements']:,}", _mb(row["bytes"]))
    console.print(dtypes)
    if top > 0 and info["weights"]:
        largest = Table(
            title=f"Largest {min(top, len(info['weights']))} weights", title_justify="left"
        )
        for col in ("name", "kind", "dtype", "shape", "size", "used by"):
            largest.add_column(col)
        for w in info["weights"][:top]:
            largest.add_row(
                w["name"],
                w["kind"],
                w["dtype"],
                str(w["shape"]),
                _mb(w["bytes"]),
                ", ".join(w["used_by"]),
            )
        console.print(largest)
    if info["predictions"] != "available (macOS)":
        err_console.print(f"[dim]{info['predictions']}[/]")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n:,} B"


def _dtypes(summary: dict[str, Any]) -> str:
    return ", ".join(summary["weights_by_dtype"]) or "-"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("kokoro-opt", "coremltools", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
