"""Per-step cost of a recipe: wall time, CPU time and peak RSS (StepMeter), in the manifest,
the cache entry and the CLI's step table. Memory assertions use margins far from the sizes
allocated; nothing here asserts on time."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kokoro_opt.recipe import load_recipe
from kokoro_opt.recipe.cache import cache_root
from kokoro_opt.recipe.resources import (
    StepMeter,
    own_peak_rss_mb,
    own_rss_mb,
    release_free_memory,
)
from kokoro_opt.recipe.runner import MANIFEST_FILE, run_recipe

MB = 1_000_000

RECIPE = """\
name: costs
model: synthetic.onnx
threads: 1
steps:
  - optimize:
      level: basic
      simplify: false
      fusion: false
  - int4: {min_elements: 64}
outputs:
  model: costs.onnx
"""


def _touch(mb: int) -> np.ndarray:
    """An array of `mb` MB whose pages are all resident."""
    return np.ones(mb * MB // 8, dtype=np.float64)


def test_meter_sees_memory_allocated_in_the_block() -> None:
    with StepMeter() as meter:
        block = _touch(300)
        del block
    usage = meter.usage
    assert usage is not None
    assert usage.peak_rss_mb >= usage.start_rss_mb + 250
    assert usage.wall_s > 0 and usage.cpu_s >= 0


def test_an_earlier_peak_is_not_charged_to_a_later_step() -> None:
    """The process's high-water mark stays at the earlier 400 MB; the step's peak must be its own
    (about start + 100 MB), from sampling, not the high-water mark."""
    earlier = _touch(400)
    del earlier
    record = own_peak_rss_mb()
    assert record is not None
    with StepMeter(interval=0.01) as meter:
        block = _touch(100)
        for _ in range(30):  # hold the block across several samples
            block += 1.0
        del block
    usage = meter.usage
    assert usage is not None
    assert usage.start_rss_mb + 60 <= usage.peak_rss_mb <= usage.start_rss_mb + 250
    assert usage.peak_rss_mb < record


def test_child_processes_count_toward_the_peak() -> None:
    code = (
        "import sys, time, numpy as np; a = np.ones(250_000_000 // 8); "
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(1.5)"
    )
    with StepMeter(interval=0.02) as meter:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.wait()
    usage = meter.usage
    assert usage is not None
    assert usage.peak_rss_mb >= usage.start_rss_mb + 200
    assert own_rss_mb() < usage.peak_rss_mb


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_free_heap_goes_back_to_the_system() -> None:
    # 300 MB of 2 KB objects (C heap, below glibc's mmap threshold) freed under a live block:
    # glibc keeps the hole resident until it is trimmed.
    before = own_rss_mb()
    blocks = [bytes(2000) + bytes([i % 256]) for i in range(150_000)]
    keep = [bytes(3000) for _ in range(10)]
    del blocks
    held = own_rss_mb()
    release_free_memory()
    assert held - before > 200
    assert own_rss_mb() < held - 200
    assert len(keep) == 10


@pytest.fixture
def recipe(recipe_dir: Path) -> Path:
    path = recipe_dir / "costs.yaml"
    path.write_text(RECIPE)
    return path


def test_runner_records_each_steps_cost(recipe: Path, tmp_path: Path, kokoro_home: Path) -> None:
    result = run_recipe(load_recipe(recipe), output_dir=tmp_path / "run")
    manifest = json.loads((result.run_dir / MANIFEST_FILE).read_text())
    peaks = []
    for step in manifest["steps"]:
        usage = step["usage"]
        assert set(usage) == {"wall_s", "cpu_s", "peak_rss_mb", "start_rss_mb"}
        assert usage["wall_s"] > 0 and usage["cpu_s"] >= 0
        assert usage["peak_rss_mb"] >= usage["start_rss_mb"] > 0
        peaks.append(usage["peak_rss_mb"])
        entry = cache_root() / step["key"][:2] / step["key"] / "entry.json"
        assert json.loads(entry.read_text())["usage"] == usage
    assert manifest["peak_rss_mb"] >= max(peaks)

    # A cached step reports what it cost when it ran, and the run's peak is this run's own.
    again = run_recipe(load_recipe(recipe), output_dir=tmp_path / "again")
    cached = json.loads((again.run_dir / MANIFEST_FILE).read_text())
    assert [s["status"] for s in cached["steps"]] == ["cached", "cached"]
    assert [s["usage"] for s in cached["steps"]] == [s["usage"] for s in manifest["steps"]]
    assert cached["peak_rss_mb"] > 0


def test_failed_step_keeps_its_cost(
    recipe: Path, tmp_path: Path, kokoro_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kokoro_opt.passes import int4

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("int4 broke")

    monkeypatch.setattr(int4, "run", boom)
    with pytest.raises(RuntimeError, match="int4 broke"):
        run_recipe(load_recipe(recipe), output_dir=tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / MANIFEST_FILE).read_text())
    failed = manifest["steps"][1]
    assert failed["status"] == "failed" and failed["usage"]["peak_rss_mb"] > 0


def test_cli_table_shows_cpu_and_peak_rss(
    recipe: Path,
    tmp_path: Path,
    kokoro_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    write_recipe: Callable[..., Path],
) -> None:
    from kokoro_opt.cli import console as consoles
    from tests.cli_helpers import run_cli

    monkeypatch.setattr(consoles.console, "width", 200)
    monkeypatch.setattr(consoles.err_console, "width", 200)
    out = run_cli(["run", str(recipe), "-o", str(tmp_path / "run")], capsys)
    assert out.exit_code == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if "peak RSS" in line)
    assert "CPU" in header and "time" in header
    rows = [line for line in out.stdout.splitlines() if " ran " in line]
    assert len(rows) == 2 and all(" MB " in row or " GB " in row for row in rows)
    assert "Run: " in out.stdout and "peak RSS" in out.stdout.split("Run: ")[1]
    assert "ran optimize (" in out.stderr and "peak " in out.stderr
