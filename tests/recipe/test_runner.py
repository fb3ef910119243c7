"""Running recipes on the synthetic model: artifacts, provenance, the step cache, --force,
and interruption safety (Ctrl-C leaves complete files only)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from kokoro_opt.graph.io import sha256_file
from kokoro_opt.recipe import load_recipe
from kokoro_opt.recipe import steps as registry
from kokoro_opt.recipe.cache import FILES_DIR, cache_root
from kokoro_opt.recipe.runner import MANIFEST_FILE, RunResult, run_recipe
from kokoro_opt.recipe.steps import StepInput, StepKind, StepOutput

TWO_STEPS = """\
name: two
model: synthetic.onnx
threads: 1
steps:
  - optimize:
      level: basic
      simplify: false
      fusion: false
  - int4:
      block_size: {block}
      min_elements: 64
      conv: true
outputs:
  model: final.onnx
"""


def _run(path: Path, tmp_path: Path, **kwargs: Any) -> RunResult:
    return run_recipe(load_recipe(path), reports_root=tmp_path / "reports", **kwargs)


def _statuses(result: RunResult) -> list[str]:
    return [r.status for r in result.steps]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name)


def test_run_writes_artifacts_and_provenance(
    write_recipe: Callable[..., Path], recipe_dir: Path, tmp_path: Path, kokoro_home: Path
) -> None:
    path = write_recipe(TWO_STEPS.format(block=32))
    result = _run(path, tmp_path)

    assert result.status == "succeeded" and _statuses(result) == ["ran", "ran"]
    run_dir = result.run_dir
    assert run_dir.parent == tmp_path / "reports" and run_dir.name.startswith("two-")
    assert (run_dir / "recipe.yaml").read_text() == path.read_text()
    for step in ("optimize", "int4"):
        model = onnx.load(str(run_dir / step / "model.onnx"))
        onnx.checker.check_model(model)
        side = json.loads((run_dir / step / "model.onnx.json").read_text())
        assert side["output_sha256"] == sha256_file(run_dir / step / "model.onnx")
        assert side["versions"]["onnxruntime"] and side["settings"]
    int4 = onnx.load(str(run_dir / "int4" / "model.onnx"))
    assert any(n.op_type == "MatMulNBits" for n in int4.graph.node)
    assert result.model == run_dir / "final.onnx"
    assert sha256_file(run_dir / "final.onnx") == sha256_file(run_dir / "int4" / "model.onnx")

    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["recipe"]["sha256"] == load_recipe(path).sha256
    assert manifest["recipe"]["resolved"]["steps"][1]["options"]["block_size"] == 32
    assert manifest["inputs"]["model"]["sha256"] == sha256_file(recipe_dir / "synthetic.onnx")
    assert manifest["versions"]["onnx"] == onnx.__version__
    steps = manifest["steps"]
    assert [s["id"] for s in steps] == ["optimize", "int4"]
    assert all(s["elapsed_s"] > 0 and len(s["key"]) == 64 for s in steps)
    assert steps[1]["outputs"]["int4/model.onnx"]["sha256"] == sha256_file(
        run_dir / "int4" / "model.onnx"
    )
    assert _leftovers(run_dir) == []


def test_second_run_skips_unchanged_steps_and_force_reruns(
    write_recipe: Callable[..., Path], tmp_path: Path, kokoro_home: Path
) -> None:
    path = write_recipe(TWO_STEPS.format(block=32))
    first = _run(path, tmp_path)
    began = time.perf_counter()
    second = _run(path, tmp_path)
    assert time.perf_counter() - began < 10
    assert _statuses(second) == ["cached", "cached"]
    assert second.run_dir != first.run_dir
    for rel in ("optimize/model.onnx", "int4/model.onnx", "final.onnx"):
        assert sha256_file(second.run_dir / rel) == sha256_file(first.run_dir / rel)
    manifest = json.loads((second.run_dir / MANIFEST_FILE).read_text())
    assert [s["status"] for s in manifest["steps"]] == ["cached", "cached"]
    assert manifest["steps"][0]["original_elapsed_s"] > 0
    assert [s["key"] for s in manifest["steps"]] == [r.key for r in first.steps]

    # Changing the second step's options re-runs it, and only it.
    path = write_recipe(TWO_STEPS.format(block=64))
    third = _run(path, tmp_path)
    assert _statuses(third) == ["cached", "ran"]
    assert third.steps[1].key != first.steps[1].key

    key = third.steps[1].key
    assert key is not None
    entry = cache_root() / key[:2] / key / "entry.json"
    before = json.loads(entry.read_text())["created"]
    forced = _run(path, tmp_path, force=True)
    assert _statuses(forced) == ["ran", "ran"]
    assert [r.key for r in forced.steps] == [r.key for r in third.steps]
    # the fresh result replaces the cached one (a re-measured bench must not be thrown away)
    assert json.loads(entry.read_text())["created"] != before
    assert _statuses(_run(path, tmp_path)) == ["cached", "cached"]


def test_changed_input_model_misses_the_cache(
    write_recipe: Callable[..., Path], recipe_dir: Path, tmp_path: Path, kokoro_home: Path
) -> None:
    from tests.synthetic import build_fp32_model

    path = write_recipe(TWO_STEPS.format(block=32))
    first = _run(path, tmp_path)
    build_fp32_model(recipe_dir / "synthetic.onnx", seed=1)  # same name, other weights
    second = _run(path, tmp_path)
    assert _statuses(second) == ["ran", "ran"]
    assert second.steps[0].key != first.steps[0].key


def test_damaged_cache_entry_is_not_used(
    write_recipe: Callable[..., Path], tmp_path: Path, kokoro_home: Path
) -> None:
    path = write_recipe(TWO_STEPS.format(block=32))
    first = _run(path, tmp_path)
    key = first.steps[1].key
    assert key is not None
    cached = cache_root() / key[:2] / key / FILES_DIR / "model.onnx"
    cached.unlink()  # hard links keep the run folder's copy; the cache's is gone
    cached.write_bytes(b"not a model")
    second = _run(path, tmp_path)
    assert _statuses(second) == ["cached", "ran"]
    onnx.checker.check_model(onnx.load(str(second.run_dir / "int4" / "model.onnx")))


def _interrupting_step(inp: StepInput) -> StepOutput:
    """A test-only step: writes half an artifact, then the user presses Ctrl-C."""
    with open(inp.staging / "model.onnx", "wb") as handle:
        handle.write(inp.model.path.read_bytes()[:100] if inp.model else b"partial")
    raise KeyboardInterrupt


def test_ctrl_c_in_a_step_leaves_no_half_written_artifact(
    write_recipe: Callable[..., Path],
    tmp_path: Path,
    kokoro_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind = StepKind(
        "interrupt",
        "transform",
        "Test only: interrupted half-way.",
        "-",
        registry.PullOptions,
        _interrupting_step,
        code=("passes",),
    )
    monkeypatch.setitem(registry.STEP_KINDS, "interrupt", kind)
    path = write_recipe(
        "name: stop\nmodel: synthetic.onnx\nthreads: 1\nsteps:\n"
        "  - optimize: {level: basic, simplify: false, fusion: false}\n"
        "  - interrupt: {}\n"
        "  - int4: {min_elements: 64}\n"
        "outputs:\n  model: final.onnx\n"
    )
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), output_dir=out)

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["status"] == "interrupted"
    assert [s["status"] for s in manifest["steps"]] == ["ran", "interrupted", "not run"]
    # the finished step is complete and cached; nothing of the interrupted one exists anywhere
    onnx.checker.check_model(onnx.load(str(out / "optimize" / "model.onnx")))
    assert not (out / "interrupt").exists() and not (out / "final.onnx").exists()
    assert not (out / "int4").exists()
    assert _leftovers(out) == []
    staging = cache_root() / "tmp"
    assert list(staging.iterdir()) == []
    entries = [p for p in cache_root().glob("??/*") if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "entry.json").is_file()

    # Without the interrupting step the next run picks up where it stopped.
    path.write_text(path.read_text().replace("  - interrupt: {}\n", ""))
    result = run_recipe(load_recipe(path), output_dir=out)
    assert _statuses(result) == ["cached", "ran"]
    assert json.loads((out / MANIFEST_FILE).read_text())["status"] == "succeeded"


class _CtrlCDuringPass:
    """Run events whose progress callback raises KeyboardInterrupt inside a real pass."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0
        self.started: list[str] = []

    def step_started(self, step: Any, position: int, total: int) -> None:
        self.started.append(step.id)

    def step_finished(self, step: Any, record: Any) -> None:
        pass

    def progress(self, task: str, completed: int, total: int) -> None:
        if self.started[-1] == "int4" and "Quantizing" in task:
            self.calls += 1
            if self.calls >= self.after:
                raise KeyboardInterrupt


def test_ctrl_c_inside_a_real_pass(
    write_recipe: Callable[..., Path], tmp_path: Path, kokoro_home: Path
) -> None:
    path = write_recipe(TWO_STEPS.format(block=32))
    out = tmp_path / "run"
    events = _CtrlCDuringPass(after=2)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), output_dir=out, events=events)
    assert events.calls == 2  # the int4 pass was running when it stopped
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [s["status"] for s in manifest["steps"]] == ["ran", "interrupted"]
    assert not (out / "int4").exists() and not (out / "final.onnx").exists()
    assert _leftovers(out) == []
    assert list((cache_root() / "tmp").iterdir()) == []


def test_shapes_step_writes_one_static_model_per_bucket_and_the_index(
    write_recipe: Callable[..., Path], tmp_path: Path, kokoro_home: Path
) -> None:
    from kokoro_opt.runtime.buckets import INDEX_FILE

    path = write_recipe(
        "name: static\nmodel: synthetic.onnx\nthreads: 1\nsteps:\n"
        "  - shapes: {tokens: [32, 16], simplify: false}\n"
    )
    result = _run(path, tmp_path)
    folder = result.run_dir / "shapes" / "buckets"
    index = json.loads((folder / INDEX_FILE).read_text())
    assert [b["tokens"] for b in index["buckets"]] == [16, 32]
    assert index["source_sha256"] == result.manifest["inputs"]["model"]["sha256"]
    for bucket in index["buckets"]:
        model = onnx.load(str(folder / bucket["file"]))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == [1, bucket["tokens"]]
    assert _statuses(_run(path, tmp_path)) == ["cached"]


GATED = """\
name: gated
model: synthetic.onnx
threads: 1
steps:
  - optimize: {{level: basic, simplify: false, fusion: false}}
  - int4: {{min_elements: 64}}
  - eval: {{texts: texts.txt, asr: false, f0: false}}
  - bench: {{texts: texts.txt, limit: 1, runs: 1, warmup: 0, memory: false}}
  - gate: {{rules: rules.yaml}}
"""

RULES = """\
version: 1
rules:
  - metric: size_bytes
    max_ratio: {ratio}
    against: reference
  - metric: quality.duration_ratio
    min: 0.5
  - metric: speedup
    min: 0.01
"""


def test_evidence_report_and_gate(
    write_recipe: Callable[..., Path], recipe_dir: Path, tmp_path: Path, kokoro_home: Path
) -> None:
    from kokoro_opt.report.schema import load_report

    (recipe_dir / "rules.yaml").write_text(RULES.format(ratio=1.0))
    path = write_recipe(GATED.format())
    result = _run(path, tmp_path)
    assert _statuses(result) == ["ran"] * 5 and result.gate_passed is True
    report = load_report(result.run_dir / "report.json")
    assert [m.name for m in report.models] == ["synthetic", "gated"]
    cand = report.model("gated")
    assert cand.quality is not None and cand.quality.reference == "synthetic"
    assert cand.speed is not None and report.comparison("gated", "synthetic") is not None
    assert cand.sha256 == sha256_file(result.run_dir / "int4" / "model.onnx")
    assert report.run.settings["recipe"] == "gated"
    for name in ("report.md", "report.html"):
        assert (result.run_dir / name).stat().st_size > 0
    wavs = [r.wav for r in report.utterances if r.wav]
    assert wavs and all((result.run_dir / w).is_file() for w in wavs)
    gate = json.loads((result.run_dir / "gate" / "gate.json").read_text())
    assert gate["passed"] is True and gate["rules"] == 3
    assert (result.run_dir / "gate" / "gate-junit.xml").is_file()

    # A stricter rules file: every measurement comes from the cache, the gate runs again
    (recipe_dir / "rules.yaml").write_text(RULES.format(ratio=0.01))
    again = _run(path, tmp_path)
    assert _statuses(again) == ["cached"] * 4 + ["ran"]
    assert again.gate_passed is False and again.status == "gate failed"
    manifest = json.loads((again.run_dir / MANIFEST_FILE).read_text())
    assert manifest["gate_passed"] is False
    failed = manifest["steps"][-1]["summary"]["failed"]
    assert len(failed) == 1 and "size_bytes" in failed[0]["rule"]


def test_code_fingerprint_follows_the_step_imports_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from kokoro_opt.recipe import cache
    from kokoro_opt.recipe.steps import STEP_KINDS

    package = tmp_path / "kokoro_opt"
    shutil.copytree(cache._PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_PACKAGE", package)
    cache.code_fingerprint.cache_clear()
    monkeypatch.setattr(cache, "code_fingerprint", cache.code_fingerprint.__wrapped__)
    parts = STEP_KINDS["optimize"].code
    before = cache.code_fingerprint(parts)
    # a new, unrelated pass does not invalidate optimize results
    (package / "passes" / "brand_new.py").write_text("X = 1\n")
    assert cache.code_fingerprint(parts) == before
    # a module the optimize chain imports (indirectly, through rewrites) does
    snake = package / "passes" / "rewrite_snake.py"
    snake.write_text(snake.read_text() + "\n# changed\n")
    changed = cache.code_fingerprint(parts)
    assert changed != before
    # and so does calibration data, for the steps that read it
    quant = STEP_KINDS["quantize"].code
    q_before = cache.code_fingerprint(quant)
    corpus = next((package / "data" / "calibration").rglob("*.txt"))
    corpus.write_text(corpus.read_text() + "One more sentence.\n")
    assert cache.code_fingerprint(quant) != q_before
    assert cache.code_fingerprint(parts) == changed


def test_split_step_writes_the_split_folder(
    write_recipe: Callable[..., Path], recipe_dir: Path, tmp_path: Path, kokoro_home: Path
) -> None:
    from tests.passes.split_graphs import kokoro_anatomy_model

    onnx.save(kokoro_anatomy_model(), recipe_dir / "anatomy.onnx")
    path = write_recipe("name: windowed\nmodel: anatomy.onnx\nthreads: 1\nsteps:\n  - split\n")
    result = _run(path, tmp_path)
    folder = result.run_dir / "split" / "split"
    meta = json.loads((folder / "split.json").read_text())
    assert meta["samples_per_frame"] == 16
    assert meta["source"]["sha256"] == result.manifest["inputs"]["model"]["sha256"]
    assert (folder / "back.onnx").is_file() and (folder / "generator.onnx").is_file()


def test_split_then_window_binding(
    write_recipe: Callable[..., Path], recipe_dir: Path, tmp_path: Path, kokoro_home: Path
) -> None:
    from tests.passes.split_graphs import kokoro_anatomy_model

    onnx.save(kokoro_anatomy_model(), recipe_dir / "anatomy.onnx")
    text = (
        "name: static\nmodel: anatomy.onnx\nthreads: 1\nsteps:\n  - split\n"
        "  - shapes:\n      window_frames: 6\n"
    )
    path = write_recipe(text)
    result = _run(path, tmp_path)
    folder = result.run_dir / "shapes" / "split"
    meta = json.loads((folder / "split.json").read_text())
    assert meta["window"]["frames"] == 6
    assert (folder / "back.onnx").is_file() and (folder / "front.onnx").is_file()
    summary = result.steps[1].summary
    assert all(g["max_abs_diff"] <= 1e-5 for g in summary["graphs"].values())
    assert all(g["static_tensors"] == g["tensors"] for g in summary["graphs"].values())
    again = _run(path, tmp_path)
    assert _statuses(again) == ["cached", "cached"]
