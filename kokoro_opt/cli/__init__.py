"""The `kokoro-opt` command line: a root Typer app with one sub-app or command per module.

Only this package prints or exits. Library errors (`KokoroOptError`) become one red line on
stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from kokoro_opt.cli import bench as bench_cli
from kokoro_opt.cli import coreml as coreml_cli
from kokoro_opt.cli import eval as eval_cli
from kokoro_opt.cli import fp16 as fp16_cli
from kokoro_opt.cli import gate as gate_cli
from kokoro_opt.cli import int4 as int4_cli
from kokoro_opt.cli import model as model_cli
from kokoro_opt.cli import optimize as optimize_cli
from kokoro_opt.cli import pin as pin_cli
from kokoro_opt.cli import quantize as quantize_cli
from kokoro_opt.cli import recipes as recipes_cli
from kokoro_opt.cli import report as report_cli
from kokoro_opt.cli import run as run_cli
from kokoro_opt.cli import serve as serve_cli
from kokoro_opt.cli import shapes as shapes_cli
from kokoro_opt.cli import speak as speak_cli
from kokoro_opt.cli import split as split_cli
from kokoro_opt.cli import verify as verify_cli
from kokoro_opt.cli.console import err_console
from kokoro_opt.errors import KokoroOptError

app = typer.Typer(
    name="kokoro-opt",
    help="Make Kokoro-82M small and fast without making it sound worse, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Registration order is --help's order: the main job first, then the passes, then the
# measuring and gating commands (Typer lists plain commands before command groups).
run_cli.register(app)
recipes_cli.register(app)
app.add_typer(model_cli.app, name="model")
speak_cli.register(app)
serve_cli.register(app)
quantize_cli.register(app)
pin_cli.register(app)
fp16_cli.register(app)
optimize_cli.register(app)
shapes_cli.register(app)
split_cli.register(app)
int4_cli.register(app)
app.add_typer(coreml_cli.app, name="coreml")
eval_cli.register(app)
bench_cli.register(app)
report_cli.register(app)
gate_cli.register(app)
verify_cli.register(app)


def main() -> None:
    """Console-script entry point: run the app and render domain errors as one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KokoroOptError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
