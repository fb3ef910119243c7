"""Plumbing shared by `kokoro-opt eval` and `kokoro-opt bench`: model and text arguments, the
provider check, run folders, and writing (merging) the report. No heavy imports at module level.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kokoro_opt.cli.console import err_console

if TYPE_CHECKING:
    from kokoro_opt.bench.harness import BenchModel
    from kokoro_opt.report.schema import Report

TEXT_SOURCES = ("smoke", "heldout", "train")
REPORTS_DIR = Path("reports")


def check_provider(provider: str) -> str:
    """The short provider name to run on (`auto` resolved), or ProviderUnavailableError naming
    the providers this onnxruntime build has. Imports onnxruntime, loads no model."""
    from kokoro_opt.runtime.session import PROVIDERS, available_providers, provider_chain

    chain = provider_chain(provider, available_providers())
    return next(short for short, full in PROVIDERS.items() if full == chain[0][0])


def check_count(value: int | None, option: str, *, minimum: int) -> None:
    """UserInputError unless `value` is None or at least `minimum`."""
    from kokoro_opt.errors import UserInputError

    if value is not None and value < minimum:
        raise UserInputError(f"{option} must be at least {minimum}, got {value}.")


def load_corpus(source: str, limit: int | None) -> list[str]:
    """Texts of a built-in split (smoke, heldout, train) or a local text/table file, the first
    `limit` of them. An unknown name fails at once instead of being looked up online."""
    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.errors import CorpusError

    check_count(limit, "--limit", minimum=1)
    if source not in TEXT_SOURCES and not Path(source).expanduser().exists():
        raise CorpusError(
            f"Unknown --texts {source!r}: it is neither a built-in split "
            f"({', '.join(TEXT_SOURCES)}) nor an existing file. Give one of those, or the path "
            "of a .txt file with one sentence per line (or a .csv/.tsv/.jsonl/.parquet)."
        )
    texts = load_texts(source)
    return texts[:limit] if limit else texts


def resolve_models(args: list[str]) -> list[BenchModel]:
    """MODEL arguments (cache names or .onnx paths) -> named model files, names unique."""
    from kokoro_opt.bench.harness import BenchModel
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.store import resolve_model

    models: list[BenchModel] = []
    for arg in args:
        path = resolve_model(arg)
        name = path.stem if Path(arg).expanduser().is_file() else arg.removesuffix(".onnx")
        for other in models:
            if other.path.resolve() == path.resolve():
                raise UserInputError(f"Model {arg!r} is given twice; name each model once.")
            if other.name == name:
                raise UserInputError(
                    f"Two models are called {name!r} ({other.path} and {path}); rename one "
                    "file so that the report can tell them apart."
                )
        models.append(BenchModel(name, path))
    return models


def run_dir(out: Path | None, label: str, created: datetime) -> Path:
    """`out`, or reports/<label>-<time>; created and checked writable before any work."""
    from kokoro_opt.cli._artifacts import check_writable_dir
    from kokoro_opt.report.meta import run_dir_name

    folder = out if out is not None else REPORTS_DIR / run_dir_name(label, created)
    return check_writable_dir(folder)


def describe(models: list[BenchModel]) -> list[Any]:
    """Model entries (sha256, size, quant style) with a spinner: hashing takes a moment."""
    from kokoro_opt.bench.reports import describe_model

    with err_console.status("Reading the models (sha256, size, quantization style) ..."):
        return [describe_model(m.name, m.path) for m in models]


def write_run(report: Report, folder: Path) -> tuple[Report, dict[str, Path]]:
    """Merge `report` into folder/report.json (if any) and write report.json/md/html."""
    from kokoro_opt.bench.reports import merge_with_existing
    from kokoro_opt.report.render import write_report_dir

    merged = merge_with_existing(report, folder)
    with err_console.status("Writing report.json, report.md and report.html (plots) ..."):
        written = write_report_dir(merged, folder)
    return merged, written


def fmt(value: float | None, spec: str = ".3f", scale: float = 1.0, suffix: str = "") -> str:
    """A number for a table cell, '-' for None."""
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"
