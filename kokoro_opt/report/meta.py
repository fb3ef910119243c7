"""Run metadata for reports (host, versions, command line), run folder names, merging reports.

Everything here is cheap: versions come from package metadata, so making a `RunMeta` never
imports onnxruntime.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from kokoro_opt import __version__
from kokoro_opt.errors import ReportError
from kokoro_opt.report.schema import (
    Comparison,
    Host,
    ModelEntry,
    Provider,
    Report,
    RunMeta,
    UtteranceRow,
)


def collect_host(*, provider: Provider, threads: int | None) -> Host:
    """Describe this machine: CPU model, logical cores, platform, Python and ORT versions."""
    return Host(
        cpu_model=cpu_model(),
        cores=os.cpu_count() or 1,
        platform=platform.platform(terse=True) + "-" + platform.machine(),
        python=platform.python_version(),
        onnxruntime_version=_version("onnxruntime")
        or _version("onnxruntime-gpu")
        or _version("onnxruntime-silicon"),
        provider=provider,
        threads=threads,
    )


def collect_run_meta(
    *,
    provider: Provider,
    threads: int | None,
    command: list[str] | None = None,
    created: datetime | None = None,
    **fields: Any,
) -> RunMeta:
    """A `RunMeta` for a run starting now; `fields` are RunMeta's optional fields (title,
    voice, lang, speed, texts, asr_model, settings)."""
    return RunMeta(
        created=created or datetime.now(timezone.utc).astimezone(),
        kokoro_opt_version=__version__,
        command=list(sys.argv if command is None else command),
        host=collect_host(provider=provider, threads=threads),
        **fields,
    )


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, macOS sysctl value via platform), or ''."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_dir_name(label: str, created: datetime) -> str:
    """Folder name for a run under reports/: '<label>-YYYYmmdd-HHMMSS' (label made path-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "run"
    return f"{safe}-{created.strftime('%Y%m%d-%H%M%S')}"


def merge_reports(first: Report, *others: Report) -> Report:
    """Combine reports of the same models (e.g. an eval and a bench) into one.

    Models are matched by name and must have the same sha256. A metric group, tradeoff or
    comparison present in a later report replaces the earlier one; per-utterance rows with the
    same (model, utterance_id) are merged field by field (later non-empty values win). The run
    metadata is the first report's; notes are concatenated and the other commands recorded.
    """
    models: dict[str, ModelEntry] = {m.name: m.model_copy(deep=True) for m in first.models}
    rows: dict[tuple[str, str], dict[str, Any]] = {
        (r.model, r.utterance_id): r.model_dump() for r in first.utterances
    }
    comparisons: dict[tuple[str, str], Comparison] = {
        (c.model, c.reference): c for c in first.comparisons
    }
    tradeoff = first.tradeoff
    notes = list(first.notes)
    for other in others:
        for m in other.models:
            old = models.get(m.name)
            if old is None:
                models[m.name] = m.model_copy(deep=True)
                continue
            if old.sha256 != m.sha256:
                raise ReportError(
                    f"Cannot merge reports: model '{m.name}' has sha256 {old.sha256[:12]}... in "
                    f"one and {m.sha256[:12]}... in the other; merge only runs of the same files."
                )
            models[m.name] = old.model_copy(
                update={
                    "speed": m.speed if m.speed is not None else old.speed,
                    "quality": m.quality if m.quality is not None else old.quality,
                }
            )
        for r in other.utterances:
            key = (r.model, r.utterance_id)
            new = r.model_dump()
            if key in rows:
                merged = rows[key]
                for field, value in new.items():
                    if value not in (None, []):
                        merged[field] = value
            else:
                rows[key] = new
        for c in other.comparisons:
            comparisons[(c.model, c.reference)] = c
        if other.tradeoff is not None:
            tradeoff = other.tradeoff
        notes.extend(other.notes)
        notes.append("Merged from: " + " ".join(other.run.command))
    return Report(
        run=first.run.model_copy(deep=True),
        models=list(models.values()),
        utterances=[UtteranceRow(**row) for row in rows.values()],
        comparisons=list(comparisons.values()),
        tradeoff=tradeoff,
        notes=notes,
    )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
