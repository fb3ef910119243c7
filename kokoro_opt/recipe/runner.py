"""Run a recipe: its steps in order, cached by content, with provenance and the evidence report.

    recipe = load_recipe("recipes/cpu-int8.yaml")
    result = run_recipe(recipe, events=my_progress)      # -> reports/cpu-int8-<timestamp>/

The run folder holds `recipe.yaml` (as given), one folder per step with its artifacts
(`optimize/model.onnx` and `model.onnx.json`, `eval/report.json` and WAVs, `gate/gate.json`
...), the merged evidence report (`report.json`, `report.md`, `report.html`), the final model
under `outputs.model`, and `manifest.json`: the recipe's hash and resolved form, the input
models' hashes, package versions, host, for every step its cache key, status (ran, cached,
failed, interrupted), time and output hashes, and the final model's and report's hashes
(`kokoro-opt verify RUN_DIR` checks them all).

A run that succeeded (its gate, if any, passed) registers its final model in the model cache
under the name of `outputs.model` (`kokoro-cpu-int8.onnx` -> `kokoro-cpu-int8`), with its
sha256 and this manifest in the sidecar, so `kokoro-opt serve kokoro-cpu-int8` serves it.

Steps whose key is in the cache (`kokoro_opt.recipe.cache`) are not run again: their outputs
are linked into the new run folder (`force=True` runs every step). Every file is written
atomically, so Ctrl-C or an error leaves complete files only: the interrupted step's staging
folder is removed and `manifest.json` says where the run stopped.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from kokoro_opt.recipe.resources import StepMeter, own_peak_rss_mb, release_free_memory
from kokoro_opt.recipe.schema import Recipe, Step, model_source_path
from kokoro_opt.recipe.steps import STEP_KINDS, Artifact, StepInput, StepOutput

MANIFEST_FILE = "manifest.json"
RECIPE_COPY = "recipe.yaml"
MANIFEST_VERSION = 1


class RunEvents(Protocol):
    """What a front end (the CLI's Rich display) hears while a recipe runs."""

    def step_started(self, step: Step, position: int, total: int) -> None: ...

    def step_finished(self, step: Step, record: StepRecord) -> None: ...

    def progress(self, task: str, completed: int, total: int) -> None: ...


@dataclass
class StepRecord:
    """How one step went: for the manifest and the final table."""

    id: str
    kind: str
    status: str = "not run"
    """ran, cached, failed, interrupted or not run."""
    key: str | None = None
    elapsed_s: float = 0.0
    original_elapsed_s: float | None = None
    """For a cached step: how long it took when it ran."""
    usage: dict[str, Any] | None = None
    """What the step's work cost (`resources.StepUsage.to_dict`: wall_s, cpu_s, peak_rss_mb,
    start_rss_mb); for a cached step, what it cost when it ran (None if not recorded)."""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "key": self.key,
            "elapsed_s": round(self.elapsed_s, 3),
            "original_elapsed_s": self.original_elapsed_s,
            "usage": self.usage,
            "outputs": self.outputs,
            "summary": self.summary,
            "error": self.error,
        }


@dataclass
class RunResult:
    run_dir: Path
    steps: list[StepRecord]
    manifest: dict[str, Any]
    model: Path | None
    report: Path | None
    gate_passed: bool | None
    registered: Path | None = None
    """The final model's place in the model cache (None when the run did not register it)."""

    @property
    def status(self) -> str:
        return str(self.manifest["status"])


def run_recipe(
    recipe: Recipe,
    *,
    output_dir: Path | None = None,
    reports_root: Path = Path("reports"),
    force: bool = False,
    events: RunEvents | None = None,
    command: list[str] | None = None,
) -> RunResult:
    """Run every step of `recipe`; see the module docstring. Raises what a step raises."""
    from kokoro_opt.recipe.cache import StepCache

    _check_output_name(recipe)
    started = datetime.now(timezone.utc).astimezone()
    run_dir = _run_dir(recipe, output_dir, reports_root, started)
    from kokoro_opt.report.files import write_text_atomic

    write_text_atomic(run_dir / RECIPE_COPY, recipe.text)
    run = _Run(recipe, run_dir, StepCache(), force, events, command or [], started)
    try:
        run.execute()
    except BaseException as exc:
        run.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        run.write_manifest()
        raise
    run.status = "succeeded" if run.gate_passed is not False else "gate failed"
    run.register_output()
    manifest = run.write_manifest()
    return RunResult(
        run_dir=run_dir,
        steps=run.records,
        manifest=manifest,
        model=run.final_model,
        report=run.evidence,
        gate_passed=run.gate_passed,
        registered=run.registered,
    )


# --------------------------------------------------------------------------- the run


class _Run:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        cache: Any,
        force: bool,
        events: RunEvents | None,
        command: list[str],
        started: datetime,
    ) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.cache = cache
        self.force = force
        self.events = events
        self.command = command
        self.started = started
        self.clock = time.perf_counter()
        self.records = [StepRecord(s.id, s.kind) for s in recipe.steps]
        self.status = "running"
        self.source: Artifact | None = None
        self.reference: Artifact | None = None
        self.model: Artifact | None = None
        self.split: Artifact | None = None
        self.final_model: Path | None = None
        self.evidence: Path | None = None
        self.evidence_parts: list[Path] = []
        self.gate_passed: bool | None = None
        self.registered: Path | None = None
        last = [s for s in recipe.steps if STEP_KINDS[s.kind].role == "transform"]
        self.last_transform = last[-1].id if last else None

    # ---- steps

    def execute(self) -> None:
        total = len(self.recipe.steps)
        for position, (step, record) in enumerate(
            zip(self.recipe.steps, self.records, strict=True)
        ):
            kind = STEP_KINDS[step.kind]
            if kind.role != "pull" and self.source is None:
                self._resolve_inputs()
            if self.events:
                self.events.step_started(step, position, total)
            began = time.perf_counter()
            try:
                self._step(step, record)
                release_free_memory()
            except BaseException as exc:
                record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                record.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                record.elapsed_s = time.perf_counter() - began
                if self.events:
                    self.events.step_finished(step, record)
                raise
            record.elapsed_s = time.perf_counter() - began
            if self.events:
                self.events.step_finished(step, record)
        if self.source is None:
            self._resolve_inputs()
        self._final_outputs()

    def _step(self, step: Step, record: StepRecord) -> None:
        from kokoro_opt.passes.base import PassContext
        from kokoro_opt.recipe.artifacts import link_tree
        from kokoro_opt.recipe.cache import FILES_DIR

        kind = STEP_KINDS[step.kind]
        names = self._names()
        entry: dict[str, Any] | None = None
        key = None
        material: dict[str, Any] | None = None
        if kind.cached:
            material = self._key_material(step, names)
            from kokoro_opt.recipe.cache import step_key

            key = step_key(material)
            record.key = key
            if not self.force:
                entry = self.cache.lookup(key)
        if entry is not None:
            record.status = "cached"
            record.original_elapsed_s = entry.get("elapsed_s")
            record.usage = entry.get("usage")
        else:
            with self.cache.staging() as staging:
                work = Path(tempfile.mkdtemp(prefix="work-", dir=staging))
                inp = StepInput(
                    step=step,
                    recipe=self.recipe,
                    model=self.model,
                    reference=self.reference,
                    evidence=self.evidence,
                    staging=staging / FILES_DIR,
                    ctx=PassContext(
                        work_dir=work, progress=self._progress, threads=self.recipe.threads
                    ),
                    names=names,
                    split=self.split,
                )
                meter = StepMeter()
                try:
                    with meter:
                        output = kind.run(inp)
                finally:
                    record.usage = meter.usage.to_dict() if meter.usage else None
                shutil.rmtree(work, ignore_errors=True)
                entry = {
                    "kind": step.kind,
                    "key": key,
                    "created": datetime.now(timezone.utc).astimezone().isoformat(),
                    "elapsed_s": (record.usage or {}).get("wall_s"),
                    "usage": record.usage,
                    "output": _output_dict(output),
                    "summary": output.summary,
                    "material": material,
                }
                if kind.cached and key is not None:
                    entry = self.cache.commit(staging, key, entry, replace=self.force)
                    files = Path(entry["folder"]) / FILES_DIR
                    link_tree(files, self.run_dir / step.id)
                else:
                    entry = _uncached_entry(staging, entry)
                    link_tree(staging / FILES_DIR, self.run_dir / step.id)
            record.status = "ran"
        if record.status == "cached":
            link_tree(Path(entry["folder"]) / FILES_DIR, self.run_dir / step.id)
        record.summary = entry.get("summary") or {}
        record.outputs = {
            f"{step.id}/{rel}": info for rel, info in (entry.get("files") or {}).items()
        }
        self._advance(step, entry)

    def _advance(self, step: Step, entry: dict[str, Any]) -> None:
        """Update the run's state (current model, evidence, gate) from a step's outputs."""
        out = entry.get("output") or {}
        files = entry.get("files") or {}
        folder = self.run_dir / step.id
        if out.get("model"):
            rel = out["model"]
            label = self.recipe.name if step.id == self.last_transform else step.id
            self.model = Artifact(folder / rel, files[rel]["sha256"], label)
        if out.get("buckets") and step.kind == "split":
            from kokoro_opt.recipe.cache import sha256_path

            path = folder / out["buckets"]
            self.split = Artifact(path, sha256_path(path), step.id)
        if out.get("report"):
            self.evidence_parts.append(folder / out["report"])
            self._write_evidence()
        if out.get("passed") is not None:
            self.gate_passed = bool(out["passed"]) and self.gate_passed is not False

    # ---- inputs, names, keys

    def _resolve_inputs(self) -> None:
        from kokoro_opt.recipe.cache import sha256_path
        from kokoro_opt.store import resolve_model

        folder = self.recipe.folder
        source_path = resolve_model(model_source_path(self.recipe.model, folder))
        self.source = Artifact(source_path, sha256_path(source_path), _label(self.recipe.model))
        if self.recipe.reference is None or self.recipe.reference == self.recipe.model:
            self.reference = self.source
        else:
            ref_path = resolve_model(model_source_path(self.recipe.reference, folder))
            self.reference = Artifact(
                ref_path, sha256_path(ref_path), _label(self.recipe.reference)
            )
        if self.model is None:
            self.model = self.source

    def _names(self) -> dict[str, str]:
        ref = self.reference.label if self.reference else "reference"
        cand = self.model.label if self.model else self.recipe.name
        if self.model is not None and self.reference is not None:
            if self.model.sha256 == self.reference.sha256:
                cand = ref
            elif cand == ref:
                cand = f"{self.recipe.name}"
        return {"reference": ref, "candidate": cand}

    def _key_material(self, step: Step, names: dict[str, str]) -> dict[str, Any]:
        from kokoro_opt.recipe.artifacts import versions
        from kokoro_opt.recipe.cache import code_fingerprint, sha256_path

        kind = STEP_KINDS[step.kind]
        options = step.config.model_dump(mode="json")
        files = {
            value: sha256_path(Path(value))
            for value in _strings(options)
            if Path(value).is_absolute() and Path(value).exists()
        }
        inputs: dict[str, Any] = {}
        if kind.role in ("transform", "buckets", "evidence") and self.model is not None:
            inputs["model"] = self.model.sha256
        if getattr(step.config, "window_frames", None) is not None and self.split is not None:
            inputs["split"] = self.split.sha256
        if kind.role == "evidence" and self.reference is not None:
            inputs["reference"] = self.reference.sha256
            inputs["names"] = names
        return {
            "kind": step.kind,
            "options": options,
            "files": files,
            "inputs": inputs,
            "threads": self.recipe.threads,
            "code": code_fingerprint(kind.code),
            "versions": versions(),
        }

    # ---- evidence and outputs

    def _write_evidence(self) -> None:
        """Merge the evidence reports so far into run_dir/report.{json,md,html}."""
        from kokoro_opt.report.meta import collect_run_meta, merge_reports
        from kokoro_opt.report.render import write_report_dir
        from kokoro_opt.report.schema import REPORT_FILE, load_report

        reports = [
            _rebase_wavs(load_report(p), p.parent, self.run_dir) for p in self.evidence_parts
        ]
        merged = merge_reports(reports[0], *reports[1:]) if len(reports) > 1 else reports[0]
        first = reports[0].run
        meta = collect_run_meta(
            provider=first.host.provider,
            threads=first.host.threads,
            command=self.command or ["kokoro-opt", "run", str(self.recipe.path)],
            created=self.started,
            title=f"Recipe {self.recipe.name}",
            voice=first.voice,
            lang=first.lang,
            speed=first.speed,
            texts=first.texts,
            asr_model=first.asr_model or next((r.run.asr_model for r in reports), None),
            settings={"recipe": self.recipe.name, "recipe_sha256": self.recipe.sha256},
        )
        notes = [n for n in merged.notes if not n.startswith("Merged from:")]
        merged = merged.model_copy(update={"run": meta, "notes": notes})
        write_report_dir(merged, self.run_dir)
        self.evidence = self.run_dir / REPORT_FILE

    def _final_outputs(self) -> None:
        from kokoro_opt.recipe.artifacts import link_or_copy

        name = self.recipe.outputs.model
        if self.model is None or self.model is self.source:
            return
        self.final_model = self.model.path
        if name:
            target = self.run_dir / name
            link_or_copy(self.model.path, target)
            sidecar = self.model.path.with_name(self.model.path.name + ".json")
            if sidecar.is_file():
                link_or_copy(sidecar, target.with_name(target.name + ".json"))
            self.final_model = target

    def register_output(self) -> None:
        """Put the final model in the model cache under outputs.model's name (not after a
        failed gate), with its sha256 and the manifest as it stands."""
        name = self.recipe.outputs.model
        if not name or self.final_model is None or self.model is None or self.gate_passed is False:
            return
        from kokoro_opt.store import register_output

        self.registered = register_output(
            self.final_model,
            name.removesuffix(".onnx"),
            sha256=self.model.sha256,
            manifest=self.manifest(),
            run_dir=self.run_dir,
        )

    def _progress(self, task: str, completed: int, total: int) -> None:
        if self.events:
            self.events.progress(task, completed, total)

    def write_manifest(self) -> dict[str, Any]:
        from kokoro_opt.recipe.artifacts import write_json_atomic

        manifest = self.manifest()
        write_json_atomic(self.run_dir / MANIFEST_FILE, manifest)
        return manifest

    def peak_rss_mb(self) -> float | None:
        """The run's peak RSS so far in MB: this process's high-water mark, or a step's peak
        when its child processes took it higher (cached steps cost nothing in this run)."""
        ran = [r.usage["peak_rss_mb"] for r in self.records if r.status != "cached" and r.usage]
        peaks = [p for p in (own_peak_rss_mb(), *ran) if p is not None]
        return round(max(peaks), 1) if peaks else None

    def manifest(self) -> dict[str, Any]:
        from kokoro_opt.graph.io import sha256_file
        from kokoro_opt.recipe.artifacts import versions
        from kokoro_opt.report.meta import collect_host

        def artifact(a: Artifact | None, source: str) -> dict[str, Any] | None:
            if a is None:
                return None
            return {"source": source, "path": str(a.path), "sha256": a.sha256, "name": a.label}

        return {
            "manifest_version": MANIFEST_VERSION,
            "status": self.status,
            "recipe": {
                "name": self.recipe.name,
                "path": str(self.recipe.path),
                "sha256": self.recipe.sha256,
                "resolved": self.recipe.resolved(),
            },
            "command": self.command,
            "started": self.started.isoformat(),
            "elapsed_s": round(time.perf_counter() - self.clock, 3),
            "force": self.force,
            "inputs": {
                "model": artifact(self.source, self.recipe.model),
                "reference": artifact(self.reference, self.recipe.reference or self.recipe.model),
            },
            "versions": versions(),
            "host": collect_host(provider="cpu", threads=self.recipe.threads).model_dump(
                mode="json"
            ),
            "steps": [r.to_dict() for r in self.records],
            "peak_rss_mb": self.peak_rss_mb(),
            "outputs": {
                "model": str(self.final_model) if self.final_model else None,
                "model_sha256": self.model.sha256 if self.final_model and self.model else None,
                "report": str(self.evidence) if self.evidence else None,
                "report_sha256": sha256_file(self.evidence) if self.evidence else None,
                "registered": str(self.registered) if self.registered else None,
            },
            "gate_passed": self.gate_passed,
        }


# --------------------------------------------------------------------------- helpers


def _run_dir(recipe: Recipe, output_dir: Path | None, root: Path, started: datetime) -> Path:
    from kokoro_opt.errors import UserInputError
    from kokoro_opt.report.meta import run_dir_name

    if output_dir is not None:
        folder = output_dir.expanduser().absolute()
        if folder.exists() and not folder.is_dir():
            raise UserInputError(f"Output {folder} is a file; give a folder for the run.")
    else:
        base = root.expanduser().absolute() / run_dir_name(recipe.name, started)
        folder, n = base, 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(
            f"Cannot create the run folder {folder}: {exc.strerror or exc}. Choose another -o."
        ) from None
    return folder


def _check_output_name(recipe: Recipe) -> None:
    """Refuse, before any work, an outputs.model that would replace a default cached model."""
    from kokoro_opt.errors import RecipeError
    from kokoro_opt.store import DEFAULT_NAMES

    name = (recipe.outputs.model or "").removesuffix(".onnx")
    if name in DEFAULT_NAMES:
        raise RecipeError(
            f"{recipe.path}: outputs.model {recipe.outputs.model!r} would replace the default "
            f"cached model {name}; choose another name, such as {recipe.name}.onnx."
        )


def _rebase_wavs(report: Any, folder: Path, run_dir: Path) -> Any:
    """WAV paths of a step's report are relative to its folder; make them relative to run_dir."""
    prefix = folder.relative_to(run_dir)
    rows = [
        r.model_copy(update={"wav": str(prefix / r.wav)}) if r.wav else r for r in report.utterances
    ]
    return report.model_copy(update={"utterances": rows})


def _label(source: str) -> str:
    name = Path(source.strip()).name
    return name.removesuffix(".onnx") or "model"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _output_dict(output: StepOutput) -> dict[str, Any]:
    return {
        "model": output.model,
        "buckets": output.buckets,
        "report": output.report,
        "passed": output.passed,
    }


def _uncached_entry(staging: Path, entry: dict[str, Any]) -> dict[str, Any]:
    from kokoro_opt.graph.io import sha256_file
    from kokoro_opt.recipe.cache import FILES_DIR

    files_dir = staging / FILES_DIR
    entry = dict(entry)
    entry["files"] = {
        str(p.relative_to(files_dir)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(files_dir.rglob("*"))
        if p.is_file()
    }
    return entry
