"""The accuracy-aware pinning search: the fastest set of float groups that keeps a budget.

Start from everything quantized; if the budget is not met, pin every "free" group (under
`FREE_SHARE` of the FP32 time: keeping it float costs no measurable speed) in one step; while
the budget is still not met, pin (keep float) the next group in the order of sensitivity per
unit of time share, verifying each step end to end; then try to un-pin each pinned group that
is not free, most expensive first, keeping the change when the budget still holds (a group
whose distance when quantized alone already exceeds the log-mel limit is not tried: it cannot
meet the budget).

`greedy` is that loop and nothing else: it calls an injected `measure(variant) -> Step`, so it
runs without ONNX Runtime in unit tests. `search` wires it to real models: each step is built
from the one calibration, screened on a few held-out sentences (on the executor given), timed
against FP32 (interleaved, serially on this machine), and, with a confirmation set
(`confirm_sentences`, the CLI's default: the whole held-out split), counts as meeting the
budget only if it also holds there.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kokoro_opt.errors import UserInputError
from kokoro_opt.measure.reference import reference_set
from kokoro_opt.measure.score import mean
from kokoro_opt.trials.pin.prepare import (
    Prepared,
    ProgressCallback,
    build_variant,
    measure_variant,
    no_progress,
    speed_against_fp32,
)

if TYPE_CHECKING:
    from kokoro_opt.measure.executors import Executor
    from kokoro_opt.measure.reference import ReferenceSet

FREE_SHARE = 0.005
"""Groups under this share of the FP32 run time are pinned together in the search's first
step: on Kokoro 13 of the 31 groups (conv_post, the iSTFT, the predictor's small layers ...)
hold 1.0 % of the time; one step for all of them keeps the search short."""


@dataclass(frozen=True)
class Budget:
    """The quality a pinned model must keep (None = not checked)."""

    max_wer_increase: float | None = None  # percentage points over FP32's WER
    max_logmel: float | None = None

    def check(self) -> None:
        if self.max_wer_increase is None and self.max_logmel is None:
            raise UserInputError(
                "No quality budget: give --max-wer-increase (points of WER over FP32), "
                "--max-logmel (log-mel distance to FP32), or both."
            )
        if self.max_wer_increase is not None and not 0 <= self.max_wer_increase <= 100:
            raise UserInputError(
                f"--max-wer-increase is in percentage points, 0 to 100, got "
                f"{self.max_wer_increase}."
            )
        if self.max_logmel is not None and not (
            math.isfinite(self.max_logmel) and self.max_logmel > 0
        ):
            raise UserInputError(
                f"--max-logmel must be a positive log-mel distance such as 0.28, got "
                f"{self.max_logmel}."
            )

    def describe(self, fp32_wer: float | None) -> str:
        parts = []
        if self.max_wer_increase is not None:
            base = f" (FP32 {fp32_wer * 100:.1f} %)" if fp32_wer is not None else ""
            parts.append(f"WER at most +{self.max_wer_increase:g} points over FP32{base}")
        if self.max_logmel is not None:
            parts.append(f"log-mel distance to FP32 at most {self.max_logmel:g}")
        return " and ".join(parts)


def parse_budget(text: str) -> Budget:
    """`wer=+0.5,logmel=0.28` (either part may be left out) -> Budget."""
    wer = logmel = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        try:
            number = float(value.strip().lstrip("+").rstrip("%"))
        except ValueError:
            number = None
        if not sep or number is None or key not in ("wer", "logmel"):
            raise UserInputError(
                f"Cannot read budget part {part!r}: write 'wer=+0.5' (points of WER over "
                "FP32) and/or 'logmel=0.28', comma-separated."
            )
        if key == "wer":
            wer = number
        else:
            logmel = number
    budget = Budget(max_wer_increase=wer, max_logmel=logmel)
    budget.check()
    return budget


@dataclass(frozen=True)
class Variant:
    """A step to verify: its name (s00, s01 ...), the groups kept float and why."""

    name: str
    pinned: list[str]
    action: str


@dataclass
class Step:
    """One end-to-end verified point of the search."""

    name: str
    action: str
    pinned: list[str]
    logmel: float
    wer: float | None
    speedup: float
    meets: bool
    per_sentence: list[float] = field(default_factory=list)
    # the check on the larger confirmation set, run when the step met the budget on the
    # screening sentences: {"sentences", "logmel", "wer", "meets"}; `meets` above is its verdict
    confirmation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Plan:
    """What the greedy loop needs to know about the groups."""

    order: list[str]  # most worth pinning first
    shares: dict[str, float]  # share of the FP32 time
    free_share: float = FREE_SHARE
    alone: dict[str, float] | None = None  # log-mel when quantized alone
    max_logmel: float | None = None
    max_steps: int = 40

    @property
    def free(self) -> list[str]:
        return [g for g in self.order if self.shares.get(g, 0.0) < self.free_share]


@dataclass
class Walk:
    """The greedy loop's record: every verified step, the chosen one, what was not tried."""

    steps: list[Step]
    chosen: Step | None
    free: list[str]
    skipped: list[str]


def greedy(plan: Plan, measure: Callable[[Variant], Step]) -> Walk:
    """The search loop (see the module doc) over an injected `measure`."""
    steps: list[Step] = []

    def verify(pinned: list[str], action: str) -> Step:
        steps.append(measure(Variant(f"s{len(steps):02d}", list(pinned), action)))
        return steps[-1]

    free = plan.free
    pinned: list[str] = []
    skipped: list[str] = []
    current = verify(pinned, "quantize every group")
    if not current.meets and free and len(steps) < plan.max_steps:
        current = verify(
            free, f"pin {len(free)} groups under {plan.free_share:.1%} of the time each"
        )
        pinned = current.pinned
    queue = [g for g in plan.order if g not in pinned]
    while not current.meets and queue and len(steps) < plan.max_steps:
        group = queue.pop(0)
        current = verify([*pinned, group], f"pin {group}")
        pinned = current.pinned
    if current.meets:
        # Un-pin what the budget does not need, the most expensive (largest time share) first.
        for group in sorted(pinned, key=lambda g: -plan.shares.get(g, 0.0)):
            if len(steps) >= plan.max_steps:
                break
            if group in free:
                continue  # no speed to win back
            alone = (plan.alone or {}).get(group, 0.0)
            if plan.max_logmel is not None and plan.alone is not None and alone > plan.max_logmel:
                skipped.append(group)  # quantized alone it already breaks the budget
                continue
            trial = [g for g in pinned if g != group]
            candidate = verify(trial, f"un-pin {group}")
            if candidate.meets:
                pinned, current = trial, candidate
    return Walk(steps, current if current.meets else None, free, skipped)


def meets_budget(budget: Budget, logmel: float, wer: float | None, ref_wer: float | None) -> bool:
    if not math.isfinite(logmel):
        return False
    if budget.max_logmel is not None and logmel > budget.max_logmel + 1e-12:
        return False
    if budget.max_wer_increase is not None:
        if wer is None or ref_wer is None:
            return False
        if wer > ref_wer + budget.max_wer_increase / 100.0 + 1e-12:
            return False
    return True


@dataclass
class SearchResult:
    """What `search` found, with everything needed to report it (`to_dict` for JSON)."""

    model: str
    model_sha256: str
    ranges: str
    ranges_sha256: str
    budget: Budget
    budget_model: dict[str, Any] | None
    budget_text: str
    sentences: int
    texts: list[str]
    voice: str
    fp32_wer: float | None
    confirm: dict[str, Any] | None
    plan: Plan
    walk: Walk
    output: str | None
    final_speed: dict[str, Any]
    analysis: dict[str, Any] | None
    elapsed_s: float

    @property
    def steps(self) -> list[Step]:
        return self.walk.steps

    @property
    def chosen(self) -> Step | None:
        return self.walk.chosen

    def to_dict(self) -> dict[str, Any]:
        chosen = self.walk.chosen
        return {
            "model": self.model,
            "model_sha256": self.model_sha256,
            "ranges": self.ranges,
            "ranges_sha256": self.ranges_sha256,
            "budget": asdict(self.budget),
            "budget_model": self.budget_model,
            "budget_text": self.budget_text,
            "sentences": self.sentences,
            "texts": self.texts,
            "voice": self.voice,
            "fp32_wer": self.fp32_wer,
            "confirm": self.confirm,
            "order": list(self.plan.order),
            "free_share": self.plan.free_share,
            "free_groups": self.walk.free,
            "time_shares": {g: round(v, 4) for g, v in self.plan.shares.items()},
            "steps": [asdict(s) for s in self.walk.steps],
            "unpin_skipped": self.walk.skipped,
            "chosen": chosen.name if chosen else None,
            "pinned": chosen.pinned if chosen else None,
            "output": self.output,
            "final_speed": self.final_speed,
            "analysis": self.analysis,
            "elapsed_s": self.elapsed_s,
        }


@dataclass
class Screen:
    """Sentences a step is measured on, with FP32's audio and the budget measured on them."""

    held: ReferenceSet
    budget: Budget
    budget_model: dict[str, Any] | None


def search(
    prepared: Prepared,
    budget: Budget,
    *,
    sentences: int = 12,
    voice: str = "jf_gongitsune",
    lang: str = "en-us",
    order: Sequence[str] | None = None,
    shares: dict[str, float] | None = None,
    alone: dict[str, float] | None = None,
    analysis_sentences: int = 4,
    timing_runs: int = 3,
    max_steps: int = 40,
    logmel_of: Path | None = None,
    confirm_sentences: int = 0,
    free_share: float = FREE_SHARE,
    out_dir: Path,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
) -> SearchResult:
    """Greedy pinning under `budget` (see the module doc). Writes the chosen model to
    `out_dir/pinned.onnx`. `order` (groups, most worth pinning first) and `shares` default to
    a sensitivity analysis on `analysis_sentences` sentences. With `logmel_of` (another
    model, such as the INT8 export) the log-mel limit is that model's distance to FP32 on the
    same sentences.

    Every step is screened on `sentences` held-out sentences; with `confirm_sentences` larger
    than that, a step that passes the screen counts only if it also holds on that many (on
    12 sentences one word is about a point of WER)."""
    if logmel_of is None:
        budget.check()
    report = progress or no_progress
    start = time.perf_counter()
    analysis = None
    if order is None or shares is None:
        analysis, order, shares, alone = _from_analysis(
            prepared, analysis_sentences, voice, lang, executor, report
        )
    unknown = [g for g in order if g not in prepared.groups]
    if unknown:
        raise UserInputError(f"Unknown group(s) in the search order: {', '.join(unknown)}.")

    def screen(count: int) -> Screen:
        held = reference_set(
            prepared,
            count,
            voice=voice,
            lang=lang,
            wer=budget.max_wer_increase is not None,
            executor=executor,
            progress=report,
        )
        return Screen(held, *_budget_on(prepared, held, budget, logmel_of, executor, report))

    first = screen(sentences)
    confirm = screen(confirm_sentences) if confirm_sentences > sentences else None
    plan = Plan(
        order=list(order),
        shares=dict(shares),
        free_share=free_share,
        alone=alone,
        max_logmel=first.budget.max_logmel,
        max_steps=max_steps,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".work"
    work.mkdir(exist_ok=True)
    measure = StepMeasure(prepared, first, confirm, work, timing_runs, executor, report)
    walk = greedy(plan, measure)
    final: dict[str, Any] = {}
    output = None
    if walk.chosen is not None:
        target = out_dir / "pinned.onnx"
        os.replace(measure.models[walk.chosen.name], target)
        measure.models[walk.chosen.name] = target
        output = str(target)
        runs = max(timing_runs, 5)
        final = speed_against_fp32(prepared, target, measure.timing, runs=runs, progress=report)
    measure.clean()
    return SearchResult(
        model=str(prepared.model_path),
        model_sha256=prepared.sha256,
        ranges=str(prepared.ranges_path),
        ranges_sha256=prepared.ranges_sha256(),
        budget=first.budget,
        budget_model=first.budget_model,
        budget_text=first.budget.describe(first.held.ref_wer),
        sentences=len(first.held.texts),
        texts=first.held.texts,
        voice=voice,
        fp32_wer=first.held.ref_wer,
        confirm=None if confirm is None else _confirm_summary(confirm),
        plan=plan,
        walk=walk,
        output=output,
        final_speed=final,
        analysis=analysis,
        elapsed_s=round(time.perf_counter() - start, 1),
    )


class StepMeasure:
    """`measure(variant) -> Step` on real models: build, screen, time, confirm."""

    def __init__(
        self,
        prepared: Prepared,
        first: Screen,
        confirm: Screen | None,
        work: Path,
        timing_runs: int,
        executor: Executor | None,
        report: ProgressCallback,
    ) -> None:
        self.prepared, self.first, self.confirm, self.work = prepared, first, confirm, work
        self.timing_runs, self.executor, self.report = timing_runs, executor, report
        self.timing = _timing_feeds(first.held)
        self.models: dict[str, Path] = {}

    def __call__(self, variant: Variant) -> Step:
        prepared, held, report = self.prepared, self.first.held, self.report
        task = f"Step {int(variant.name[1:])}: {variant.action}"
        report(task, 0, 3)
        path = self.work / f"{variant.name}.onnx"
        build_variant(prepared, [g for g in prepared.groups if g not in variant.pinned], path)
        self.models[variant.name] = path
        report(task, 1, 3)
        dists, wer = measure_variant(prepared, path, held, executor=self.executor)
        report(task, 2, 3)
        speed = speed_against_fp32(prepared, path, self.timing, runs=self.timing_runs)
        meets = meets_budget(self.first.budget, mean(dists), wer, held.ref_wer)
        confirmation = None
        if meets and self.confirm is not None:
            confirmation = self._check(path, self.confirm)
            meets = confirmation["meets"]
        report(task, 3, 3)
        return Step(
            name=variant.name,
            action=variant.action,
            pinned=list(variant.pinned),
            logmel=mean(dists),
            wer=wer,
            speedup=speed["speedup"],
            meets=meets,
            per_sentence=[round(d, 4) for d in dists],
            confirmation=confirmation,
        )

    def _check(self, path: Path, screen: Screen) -> dict[str, Any]:
        """Log-mel distance, WER and the budget's verdict for `path` on `screen`."""
        label = f"Confirming on {len(screen.held.texts)} sentences"
        dists, wer = measure_variant(
            self.prepared, path, screen.held, executor=self.executor, progress=self.report,
            label=label,
        )  # fmt: skip
        logmel = mean(dists)
        return {
            "sentences": len(screen.held.texts),
            "logmel": logmel,
            "wer": wer,
            "meets": meets_budget(screen.budget, logmel, wer, screen.held.ref_wer),
        }

    def clean(self) -> None:
        for path in self.models.values():
            if path.parent == self.work:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.work.rmdir()


def _from_analysis(
    prepared: Prepared,
    sentences: int,
    voice: str,
    lang: str,
    executor: Executor | None,
    report: ProgressCallback,
) -> tuple[dict[str, Any], list[str], dict[str, float], dict[str, float]]:
    """A quick sensitivity analysis: (analysis, order, time shares, log-mel alone)."""
    from kokoro_opt.trials.pin.analysis import analyze

    analysis = analyze(
        prepared,
        sentences=sentences,
        voice=voice,
        lang=lang,
        qdq_debug=False,
        executor=executor,
        progress=report,
    )
    ranked = sorted(analysis["groups"], key=lambda r: -r["sensitivity_per_time"])
    shares = {r["group"]: r["time_share"] for r in analysis["groups"]}
    alone = {r["group"]: r["logmel_alone"] for r in analysis["groups"]}
    return analysis, [r["group"] for r in ranked], shares, alone


def _budget_on(
    prepared: Prepared,
    held: ReferenceSet,
    budget: Budget,
    logmel_of: Path | None,
    executor: Executor | None,
    progress: ProgressCallback,
) -> tuple[Budget, dict[str, Any] | None]:
    """`budget` for these sentences: with `logmel_of`, its log-mel limit is that model's mean
    distance to FP32 on them (and the model's WER is recorded)."""
    if logmel_of is None:
        return budget, None
    dists, wer = measure_variant(
        prepared, logmel_of, held, executor=executor, progress=progress,
        label="Speaking the budget's reference model",
    )  # fmt: skip
    limits = Budget(max_wer_increase=budget.max_wer_increase, max_logmel=mean(dists))
    limits.check()
    return limits, {
        "path": str(logmel_of),
        "logmel": mean(dists),
        "per_sentence": [round(d, 4) for d in dists],
        "wer": wer,
    }


def _confirm_summary(confirm: Screen) -> dict[str, Any]:
    return {
        "sentences": len(confirm.held.texts),
        "fp32_wer": confirm.held.ref_wer,
        "budget": asdict(confirm.budget),
        "budget_model": confirm.budget_model,
        "budget_text": confirm.budget.describe(confirm.held.ref_wer),
    }


def _timing_feeds(held: ReferenceSet) -> list[dict[str, Any]]:
    """The median-length sentence (one input keeps each step's timing cheap)."""
    order = sorted(range(len(held.feeds)), key=lambda i: held.phonemes[i])
    return [held.feeds[order[len(order) // 2]]]
