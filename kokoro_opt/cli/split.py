"""`kokoro-opt split MODEL -o DIR`: cut a Kokoro model at the alignment for windowed synthesis.

Thin: resolve the model, run `kokoro_opt.passes.split`, write front.onnx, back.onnx (and
decoder.onnx + generator.onnx), split.json, and a manifest `split.manifest.json` with
provenance. `kokoro-opt speak --split DIR` and `kokoro-opt serve` take the folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kokoro_opt.cli._artifacts import check_writable_dir, mb, progress_bar, versions
from kokoro_opt.cli.console import console, err_console


def register(app: typer.Typer) -> None:
    """Add the `split` command to the root app."""
    app.command("split")(split)


def split(
    model: Annotated[
        str,
        typer.Argument(help="A Kokoro model: a cache name (such as kokoro-fp32) or a path."),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The folder to write (an earlier split folder there is replaced).",
        ),
    ],
    generator: Annotated[
        bool,
        typer.Option(
            "--generator/--no-generator",
            help="Also cut the back half at the generator's input (decoder.onnx and "
            "generator.onnx), which the 'first' and 'generator' statistics policies need.",
        ),
    ] = True,
    threads: Annotated[int, typer.Option(help="Intra-op threads for the probe runs.")] = 2,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print split.json instead of a summary.")
    ] = False,
) -> None:
    """Split MODEL into a front (tokens -> frame-level features) and a windowable back."""
    import json

    from kokoro_opt.errors import UserInputError
    from kokoro_opt.graph.io import load_model, sha256_file
    from kokoro_opt.passes import split as pass_
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.store import resolve_model

    if threads < 1:
        raise UserInputError("--threads must be at least 1.")
    model_path = resolve_model(model)
    out = output.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"Output {out} is a file; give a folder path such as {out}.split.")
    if out.is_dir() and any(out.iterdir()) and not (out / "split.json").is_file():
        raise UserInputError(
            f"Output {out} is a folder with other files in it; give a new folder or an earlier "
            "split folder to replace."
        )
    check_writable_dir(out.parent)
    start = time.perf_counter()
    with err_console.status(f"Loading {model_path.name} ..."):
        source = load_model(model_path)
    with progress_bar() as report:
        ctx = PassContext(progress=report, threads=threads)
        models = pass_.split(source, pass_.Config(generator=generator), ctx)
        models.meta["source"] = {"path": str(model_path), "sha256": sha256_file(model_path)}
        models.meta["versions"] = versions()
        pass_.save(models, out)
    elapsed = time.perf_counter() - start
    if json_output:
        console.print_json(json.dumps(models.meta))
        return
    from rich.table import Table

    table = Table(title=f"split {model_path.name} -> {out}")
    table.add_column("file")
    table.add_column("nodes", justify="right")
    table.add_column("size", justify="right")
    for name, part in models.files().items():
        table.add_row(name, str(len(part.graph.node)), mb((out / name).stat().st_size))
    console.print(table)
    console.print(
        f"{models.meta['samples_per_frame']} samples per frame; receptive field "
        f"{models.meta['receptive_field_frames']} frames each side; {elapsed:.1f} s"
    )
