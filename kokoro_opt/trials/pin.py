"""Which layers to keep float: sensitivity analysis and an accuracy-aware pinning search.

Both build their variants from ONE calibration (`kokoro_opt.passes.pin.calibrated_ranges`,
cached by model sha256 and settings) with `quantize_with_ranges` and a different set of
excluded nodes, so a variant costs one quantizer run, not a calibration.

Fidelity is measured on held-out sentences (never used for calibration) read by one voice at
speed 1: the log-mel distance to the FP32 audio after DTW alignment
(`kokoro_opt.quality.distance`; quantization nudges durations, so audio is aligned before it
is compared) and, in the search, the WER of an offline ASR against the text. The FP32 audio
and transcripts are cached per model and sentence set.

`analyze`: for each layer group, the distance when that group ALONE is quantized (everything
else float); optionally also the distance when every group BUT it is quantized (how much
keeping it float removes); the per-tensor float-vs-QDQ error of onnxruntime's
`qdq_loss_debug` (weight SQNR, and activation SQNR of the QDQ pairs on one sentence) in the
fully quantized model; and each group's share of the FP32 run time from ORT's profiler.

`search`: start from everything quantized; if the budget is not met, pin every "free" group
(under `FREE_SHARE` of the FP32 time: keeping it float costs no measurable speed) in one step;
while the budget is still not met, pin (keep float) the next group in the order of
sensitivity per unit of time share, verifying each step end to end; then try to un-pin each
pinned group that is not free, most expensive first, keeping the change when the budget still
holds (a group whose distance when quantized alone already exceeds the log-mel limit is not
tried: it cannot meet the budget). Every step is timed against FP32 (interleaved)
and recorded; the result carries the trade-off curve. Steps are screened on a few sentences;
with a confirmation set (`confirm_sentences`, the CLI's default: the whole held-out split) a
step that passes the screen meets the budget only if it also holds on that set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kokoro_opt.errors import UserInputError
from kokoro_opt.passes import pin

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
SAMPLE_RATE = 24000
FREE_SHARE = 0.005
"""Groups under this share of the FP32 run time are pinned together in the search's first
step: on Kokoro 13 of the 31 groups (conv_post, the iSTFT, the predictor's small layers ...)
hold 1.0 % of the time, and pinning them one per step spent a 12-step search on them."""
_EPS_SHARE = 1e-4


def _no_progress(task: str, done: int, total: int) -> None:
    return None


# -- shared preparation -------------------------------------------------------------------------


@dataclass
class Prepared:
    """A float model ready for variant building: its groups and its one calibration."""

    model_path: Path
    sha256: str
    config: pin.Config
    groups: dict[str, list[str]]
    group_ops: dict[str, dict[str, int]]
    ranges_path: Path
    ranges_reused: bool
    contract: Any
    cache_folder: Path
    threads: int

    def nodes_outside(self, quantized: Sequence[str]) -> list[str]:
        """Node names of every group not in `quantized` (what quantize_with_ranges excludes)."""
        chosen = set(quantized)
        return [n for g, names in self.groups.items() if g not in chosen for n in names]


def prepare(
    model_path: Path,
    config: pin.Config,
    *,
    cache_folder: Path,
    threads: int = 2,
    ranges_path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> Prepared:
    """Check the model is float32, group its quantizable nodes and calibrate once (cached),
    or use `ranges_path`, an ORT calibration cache made earlier for this model."""
    from kokoro_opt.graph.io import load_model, sha256_file
    from kokoro_opt.passes.base import PassContext
    from kokoro_opt.passes.quantize_static import check_float_model
    from kokoro_opt.runtime.contract import ModelContract

    report = progress or _no_progress
    model = load_model(model_path)
    check_float_model(model)
    contract = ModelContract.from_onnx(model)
    groups = pin.group_nodes(model, ops=config.ops, depth=config.depth)
    if not groups:
        raise UserInputError(
            f"{model_path.name} has no {'/'.join(config.ops)} nodes to quantize; pinning needs "
            "a float32 Kokoro model such as kokoro-fp32."
        )
    ops = pin.group_ops(model, groups)
    del model
    sha = sha256_file(model_path)
    if ranges_path is not None:
        ranges, reused = pin.check_ranges_file(ranges_path), True
    else:
        ctx = PassContext(progress=report, threads=threads)
        ranges, reused = pin.calibrated_ranges(
            model_path, config, ctx, cache_folder=cache_folder / "ranges", model_sha256=sha
        )
    return Prepared(
        model_path=Path(model_path),
        sha256=sha,
        config=config,
        groups=groups,
        group_ops=ops,
        ranges_path=ranges,
        ranges_reused=reused,
        contract=contract,
        cache_folder=cache_folder,
        threads=threads,
    )


def build_variant(prepared: Prepared, quantized: Sequence[str], out_path: Path) -> Path:
    """The model with exactly the `quantized` groups in INT8 (the rest float32)."""
    import shutil

    from kokoro_opt.passes.quantize_static import quantize_with_ranges

    if not quantized:
        shutil.copyfile(prepared.model_path, out_path)
        return out_path
    return quantize_with_ranges(
        prepared.model_path,
        out_path,
        prepared.ranges_path,
        prepared.config.quant_config(),
        nodes_to_exclude=prepared.nodes_outside(quantized),
    )


@dataclass
class Sentences:
    """Held-out sentences as model inputs, with the FP32 audio (and transcripts) for them."""

    texts: list[str]
    feeds: list[dict[str, Any]]
    phonemes: list[int]
    ref_audio: list[np.ndarray]
    ref_transcripts: list[str] | None = None
    ref_wer: float | None = None


def heldout_sentences(
    prepared: Prepared,
    count: int,
    *,
    voice: str = "jf_gongitsune",
    lang: str = "en-us",
    wer: bool = False,
    progress: ProgressCallback | None = None,
) -> Sentences:
    """The first `count` held-out sentences and the FP32 reference's audio for them (cached
    under the cache folder by model sha256 and inputs)."""
    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import corpus_feeds

    report = progress or _no_progress
    texts = load_texts("heldout")
    if not 1 <= count <= len(texts):
        raise UserInputError(
            f"--sentences must be 1 to {len(texts)} (the held-out split's size), got {count}."
        )
    samples, feeds = corpus_feeds(
        texts[:count],
        prepared.contract,
        count=count,
        voices=[voice],
        speeds=[1.0],
        seed=0,
        lang=lang,
        source="the held-out split",
        progress=report,
    )
    digest = hashlib.sha256(prepared.sha256.encode())
    for feed in feeds:
        for key in sorted(feed):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(feed[key]).tobytes())
    key = digest.hexdigest()[:24]
    cache = prepared.cache_folder / "reference" / f"{key}.npz"
    audio: list[np.ndarray] | None = None
    if cache.is_file():
        try:
            with np.load(cache) as data:
                audio = [data[f"a{i}"] for i in range(len(feeds))]
        except (OSError, KeyError, ValueError):
            audio = None
    if audio is None:
        audio = speak(prepared.model_path, feeds, prepared.contract, prepared.threads, report)
        _save_npz(cache, {f"a{i}": a for i, a in enumerate(audio)})
    sentences = Sentences(
        texts=[s.text for s in samples],
        feeds=feeds,
        phonemes=[s.n_phonemes for s in samples],
        ref_audio=audio,
    )
    if wer:
        tcache = cache.with_suffix(".transcripts.json")
        from kokoro_opt.quality.asr import MODEL_NAME

        cached = _read_json(tcache)
        if (
            cached
            and cached.get("asr") == MODEL_NAME
            and len(cached.get("transcripts", [])) == len(feeds)
        ):
            sentences.ref_transcripts = cached["transcripts"]
        else:
            sentences.ref_transcripts = transcribe_all(audio, prepared.threads, report)
            _write_json(tcache, {"asr": MODEL_NAME, "transcripts": sentences.ref_transcripts})
        sentences.ref_wer = word_error_rate(sentences.texts, sentences.ref_transcripts)
    return sentences


def speak(
    model_path: Path,
    feeds: Sequence[dict[str, Any]],
    contract: Any,
    threads: int,
    progress: ProgressCallback | None = None,
    *,
    task: str = "Speaking",
) -> list[np.ndarray]:
    """The model's audio for each feed."""
    session = _session(model_path, threads)
    out = []
    for i, feed in enumerate(feeds):
        (audio,) = session.run([contract.audio], feed)
        out.append(np.asarray(audio, dtype=np.float32).reshape(-1))
        if progress is not None:
            progress(task, i + 1, len(feeds))
    return out


def transcribe_all(
    audio: Sequence[np.ndarray], threads: int, progress: ProgressCallback | None = None
) -> list[str]:
    from kokoro_opt.quality.asr import transcribe

    out = []
    for i, a in enumerate(audio):
        out.append(transcribe(np.nan_to_num(a), SAMPLE_RATE, threads=threads))
        if progress is not None:
            progress("Transcribing", i + 1, len(audio))
    return out


def word_error_rate(texts: Sequence[str], transcripts: Sequence[str]) -> float:
    from kokoro_opt.quality.wer import error_rates

    return float(error_rates(list(texts), list(transcripts)).wer)


def logmel_distances(audio: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> list[float]:
    """Log-mel distance after DTW per sentence; audio that is not finite scores infinity."""
    from kokoro_opt.quality.distance import logmel_distance

    out = []
    for a, r in zip(audio, ref, strict=True):
        if a.size == 0 or not np.isfinite(a).all():
            out.append(math.inf)
        else:
            out.append(float(logmel_distance(a, r, SAMPLE_RATE)))
    return out


# -- analysis -----------------------------------------------------------------------------------


@dataclass
class GroupSensitivity:
    """What one group costs in fidelity when quantized and in time when kept float."""

    group: str
    nodes: int
    ops: dict[str, int]
    time_share: float
    logmel_alone: float
    logmel_all_but: float | None = None
    weight_sqnr_db: float | None = None
    activation_sqnr_db: float | None = None
    per_sentence: list[float] = field(default_factory=list)

    @property
    def sensitivity_per_time(self) -> float:
        return self.logmel_alone / max(self.time_share, _EPS_SHARE)


def analyze(
    prepared: Prepared,
    *,
    sentences: int = 4,
    voice: str = "jf_gongitsune",
    lang: str = "en-us",
    all_but: bool = False,
    qdq_debug: bool = True,
    groups: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Per-group sensitivity, per-tensor QDQ error and time share, ranked (most sensitive
    first). See the module docstring."""
    report = progress or _no_progress
    start = time.perf_counter()
    names = list(groups) if groups else list(prepared.groups)
    held = heldout_sentences(prepared, sentences, voice=voice, lang=lang, progress=report)
    shares, op_shares = time_shares(prepared, held.feeds[:1], report)
    rows: list[GroupSensitivity] = []
    with tempfile.TemporaryDirectory(prefix="kokoro-opt-pin-") as tmp:
        work = Path(tmp)
        full_path: Path | None = None
        total = len(names) * (2 if all_but else 1)
        done = 0
        for group in names:
            report("Quantizing one group at a time", done, total)
            path = build_variant(prepared, [group], work / "alone.onnx")
            dists = logmel_distances(
                speak(path, held.feeds, prepared.contract, prepared.threads), held.ref_audio
            )
            done += 1
            row = GroupSensitivity(
                group=group,
                nodes=len(prepared.groups[group]),
                ops=prepared.group_ops[group],
                time_share=shares.get(group, 0.0),
                logmel_alone=_mean(dists),
                per_sentence=[round(d, 4) for d in dists],
            )
            if all_but:
                report("Quantizing one group at a time", done, total)
                others = [g for g in prepared.groups if g != group]
                path = build_variant(prepared, others, work / "all-but.onnx")
                audio = speak(path, held.feeds, prepared.contract, prepared.threads)
                row.logmel_all_but = _mean(logmel_distances(audio, held.ref_audio))
                done += 1
            rows.append(row)
        report("Quantizing one group at a time", total, total)
        full_logmel = None
        if qdq_debug:
            full_path = build_variant(prepared, list(prepared.groups), work / "all.onnx")
            full_audio = speak(full_path, held.feeds, prepared.contract, prepared.threads)
            full_logmel = _mean(logmel_distances(full_audio, held.ref_audio))
            report("Per-tensor QDQ error", 0, 1)
            weight, act = qdq_errors(prepared, full_path, held.feeds[:1], work)
            report("Per-tensor QDQ error", 1, 1)
            for row in rows:
                row.weight_sqnr_db = weight.get(row.group)
                row.activation_sqnr_db = act.get(row.group)
    rows.sort(key=lambda r: (-r.logmel_alone, r.group))
    return {
        "model": str(prepared.model_path),
        "model_sha256": prepared.sha256,
        "sentences": len(held.texts),
        "texts": held.texts,
        "voice": voice,
        "calibration": {
            "ranges": str(prepared.ranges_path),
            "ranges_sha256": _sha(prepared.ranges_path),
            "reused": prepared.ranges_reused,
            "method": prepared.config.method,
            "samples": prepared.config.samples,
            "corpus": prepared.config.calib,
        },
        "all_quantized_logmel": full_logmel,
        "time_share_by_op": op_shares,
        "groups": [
            {**asdict(r), "sensitivity_per_time": round(r.sensitivity_per_time, 4)} for r in rows
        ],
        "elapsed_s": round(time.perf_counter() - start, 1),
    }


def time_shares(
    prepared: Prepared, feeds: Sequence[dict[str, Any]], progress: ProgressCallback
) -> tuple[dict[str, float], dict[str, float]]:
    """Each group's share of the FP32 model's node time (its quantizable nodes, ORT profiler,
    after one warm-up run), and the share of each op type."""
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    progress("Profiling FP32", 0, 1)
    with tempfile.TemporaryDirectory(prefix="kokoro-opt-prof-") as tmp:
        opts = session_options(prepared.threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "pin")
        session = ort.InferenceSession(
            str(prepared.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        for feed in feeds:
            session.run(None, feed)
        for feed in feeds:
            session.run(None, feed)
        profile = Path(session.end_profiling())
        events = json.loads(profile.read_text())
    by_node: dict[str, float] = {}
    by_op: dict[str, float] = {}
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start_us = runs[len(feeds)]["ts"] if len(runs) > len(feeds) else 0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e.get("ts", 0) < start_us:
            continue
        name = e["name"][: -len("_kernel_time")]
        by_node[name] = by_node.get(name, 0.0) + float(e.get("dur", 0))
        op = str(e.get("args", {}).get("op_name", "?"))
        by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(by_node.values()) or 1.0
    shares = {
        g: sum(by_node.get(n, 0.0) for n in names) / total for g, names in prepared.groups.items()
    }
    progress("Profiling FP32", 1, 1)
    top = dict(sorted(((k, v / total) for k, v in by_op.items()), key=lambda kv: -kv[1])[:12])
    return shares, {k: round(v, 4) for k, v in top.items()}


def qdq_errors(
    prepared: Prepared, qdq_path: Path, feeds: Sequence[dict[str, Any]], work: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Worst weight SQNR (dB) and worst activation QDQ SQNR (dB) per group, from
    onnxruntime.quantization.qdq_loss_debug on the fully quantized model."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from kokoro_opt.calib.feeds import FeedReader
    from kokoro_opt.passes.quantize_static import _quiet

    with _quiet():
        weights = dbg.compute_weight_error(
            dbg.create_weight_matching(str(prepared.model_path), str(qdq_path))
        )
    model = onnx.load(str(qdq_path), load_external_data=False)
    groups_of_node = {n: g for g, names in prepared.groups.items() for n in names}
    by_weight: dict[str, set[str]] = {}
    by_act: dict[str, set[str]] = {}
    dq_source: dict[str, str] = {}
    q_source: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            dq_source[node.output[0]] = node.input[0]
        if node.op_type == "QuantizeLinear":
            q_source[node.output[0]] = node.input[0]
    for node in model.graph.node:
        group = groups_of_node.get(node.name)
        if group is None:
            continue
        for index, tensor in enumerate(node.input[:2]):
            source = dq_source.get(tensor)
            if source is None:
                continue
            if index == 1:  # a weight: its initializer is the float name + "_quantized"
                by_weight.setdefault(source.removesuffix("_quantized"), set()).add(group)
            else:
                by_act.setdefault(q_source.get(source, source), set()).add(group)
        for out in node.output:
            by_act.setdefault(out, set()).add(group)
    weight_worst: dict[str, float] = {}
    for name, sqnr in weights.items():
        for g in by_weight.get(name, ()):
            weight_worst[g] = min(weight_worst.get(g, math.inf), float(sqnr))
    aug = work / "qdq-augmented.onnx"
    with _quiet():
        dbg.modify_model_output_intermediate_tensors(
            str(qdq_path), str(aug), op_types_for_saving=["QuantizeLinear", "DequantizeLinear"]
        )
        acts = dbg.collect_activations(str(aug), FeedReader(list(feeds)))
        matched = dbg.create_activation_matching(acts)
    aug.unlink(missing_ok=True)
    act_worst: dict[str, float] = {}
    for tensor, pair in matched.items():
        pre, post = pair.get("pre_qdq"), pair.get("post_qdq")
        if pre is None or post is None:
            continue
        # The float model's activations have other shapes once durations change, so only
        # the QDQ error of each pair (qdq_loss_debug's "qdq_err") is computed.
        value = float(dbg.compute_signal_to_quantization_noice_ratio(pre, post))
        if not math.isfinite(value):
            continue
        for g in by_act.get(tensor, ()):
            act_worst[g] = min(act_worst.get(g, math.inf), float(value))
    return (
        {g: round(v, 2) for g, v in weight_worst.items()},
        {g: round(v, 2) for g, v in act_worst.items()},
    )


# -- search -------------------------------------------------------------------------------------


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
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Greedy pinning under `budget` (see the module docstring). Writes the chosen model to
    `out_dir/pinned.onnx`. `order` (groups, most worth pinning first) and `shares` default to
    a sensitivity analysis on `analysis_sentences` sentences. With `logmel_of` (another
    model, such as the INT8 export) the log-mel limit is that model's distance to FP32 on the
    same sentences.

    Every step is screened on `sentences` held-out sentences. With `confirm_sentences` larger
    than that, a step that passes the screen is checked again on that many (the budget
    recomputed on them) and counts as meeting the budget only if it holds there too: on 12
    sentences one word is about a point of WER, so a screen alone passes models that miss
    the budget on the whole held-out split."""
    if logmel_of is None:
        budget.check()
    report = progress or _no_progress
    start = time.perf_counter()
    analysis = None
    if order is None or shares is None:
        analysis = analyze(
            prepared,
            sentences=analysis_sentences,
            voice=voice,
            lang=lang,
            qdq_debug=False,
            progress=report,
        )
        ranked = sorted(analysis["groups"], key=lambda r: -r["sensitivity_per_time"])
        order = [r["group"] for r in ranked]
        shares = {r["group"]: r["time_share"] for r in analysis["groups"]}
        alone = {r["group"]: r["logmel_alone"] for r in analysis["groups"]}
    unknown = [g for g in order if g not in prepared.groups]
    if unknown:
        raise UserInputError(f"Unknown group(s) in the search order: {', '.join(unknown)}.")
    wanted = budget  # as given; `budget` below is the one measured on the screening set

    def sentence_set(count: int) -> tuple[Sentences, Budget, dict[str, Any] | None]:
        """`count` held-out sentences with FP32's audio, and the budget measured on them."""
        chosen = heldout_sentences(
            prepared,
            count,
            voice=voice,
            lang=lang,
            wer=wanted.max_wer_increase is not None,
            progress=report,
        )
        return chosen, *_budget_on(prepared, chosen, wanted, logmel_of, report)

    held, budget, budget_model = sentence_set(sentences)
    confirm = sentence_set(confirm_sentences) if confirm_sentences > sentences else None
    timing = _timing_feeds(held)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    models: dict[str, Path] = {}
    work = out_dir / ".work"
    work.mkdir(exist_ok=True)

    def verify(pinned: list[str], action: str) -> Step:
        index = len(steps)
        name = f"s{index:02d}"
        report(f"Step {index}: {action}", 0, 3)
        path = work / f"{name}.onnx"
        quantized = [g for g in prepared.groups if g not in pinned]
        build_variant(prepared, quantized, path)
        report(f"Step {index}: {action}", 1, 3)
        dists, wer = _measure(prepared, path, held)
        report(f"Step {index}: {action}", 2, 3)
        speed = _speedup(prepared, path, timing, runs=timing_runs)
        meets = _meets(budget, _mean(dists), wer, held.ref_wer)
        confirmation = None
        if meets and confirm is not None:
            confirmation = _check_on(prepared, path, confirm[0], confirm[1], report)
            meets = confirmation["meets"]
        step = Step(
            name=name,
            action=action,
            pinned=list(pinned),
            logmel=_mean(dists),
            wer=wer,
            speedup=speed,
            meets=meets,
            per_sentence=[round(d, 4) for d in dists],
            confirmation=confirmation,
        )
        report(f"Step {index}: {action}", 3, 3)
        steps.append(step)
        models[name] = path
        return step

    pinned: list[str] = []
    skipped: list[str] = []
    current = verify(pinned, "quantize every group")
    free = [g for g in order if (shares or {}).get(g, 0.0) < free_share]
    if not current.meets and free and len(steps) < max_steps:
        current = verify(free, f"pin {len(free)} groups under {free_share:.1%} of the time each")
        pinned = current.pinned
    queue = [g for g in order if g not in pinned]
    while not current.meets and queue and len(steps) < max_steps:
        group = queue.pop(0)
        candidate = verify([*pinned, group], f"pin {group}")
        pinned = candidate.pinned
        current = candidate
    if current.meets:
        # Un-pin what the budget does not need, the most expensive (largest time share) first.
        for group in sorted(pinned, key=lambda g: -(shares or {}).get(g, 0.0)):
            if len(steps) >= max_steps:
                break
            if group in free:
                continue  # no speed to win back
            if (
                budget.max_logmel is not None
                and alone is not None
                and alone.get(group, 0.0) > budget.max_logmel
            ):
                skipped.append(group)  # quantized alone it already breaks the budget
                continue
            trial = [g for g in pinned if g != group]
            candidate = verify(trial, f"un-pin {group}")
            if candidate.meets:
                pinned = trial
                current = candidate
    chosen = current if current.meets else None
    final: dict[str, Any] = {}
    if chosen is not None:
        target = out_dir / "pinned.onnx"
        os.replace(models[chosen.name], target)
        models[chosen.name] = target
        final = final_speed(prepared, target, timing, runs=max(timing_runs, 5), progress=report)
    for path in models.values():
        if path.parent == work:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work.rmdir()
    return {
        "model": str(prepared.model_path),
        "model_sha256": prepared.sha256,
        "ranges": str(prepared.ranges_path),
        "ranges_sha256": _sha(prepared.ranges_path),
        "budget": asdict(budget),
        "budget_model": budget_model,
        "budget_text": budget.describe(held.ref_wer),
        "sentences": len(held.texts),
        "texts": held.texts,
        "voice": voice,
        "fp32_wer": held.ref_wer,
        "confirm": None
        if confirm is None
        else {
            "sentences": len(confirm[0].texts),
            "fp32_wer": confirm[0].ref_wer,
            "budget": asdict(confirm[1]),
            "budget_model": confirm[2],
            "budget_text": confirm[1].describe(confirm[0].ref_wer),
        },
        "order": list(order),
        "free_share": free_share,
        "free_groups": free,
        "time_shares": {g: round(v, 4) for g, v in (shares or {}).items()},
        "steps": [asdict(s) for s in steps],
        "unpin_skipped": skipped,
        "chosen": chosen.name if chosen else None,
        "pinned": chosen.pinned if chosen else None,
        "output": str(out_dir / "pinned.onnx") if chosen else None,
        "final_speed": final,
        "analysis": analysis,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }


def _budget_on(
    prepared: Prepared,
    held: Sentences,
    budget: Budget,
    logmel_of: Path | None,
    progress: ProgressCallback,
) -> tuple[Budget, dict[str, Any] | None]:
    """`budget` for these sentences: with `logmel_of`, its log-mel limit is that model's mean
    distance to FP32 on them (and the model's WER is recorded)."""
    if logmel_of is None:
        return budget, None
    audio = speak(
        logmel_of, held.feeds, prepared.contract, prepared.threads, progress,
        task="Speaking the budget's reference model",
    )  # fmt: skip
    dists = logmel_distances(audio, held.ref_audio)
    limits = Budget(max_wer_increase=budget.max_wer_increase, max_logmel=_mean(dists))
    limits.check()
    return limits, {
        "path": str(logmel_of),
        "logmel": _mean(dists),
        "per_sentence": [round(d, 4) for d in dists],
        "wer": None
        if held.ref_transcripts is None
        else word_error_rate(held.texts, transcribe_all(audio, prepared.threads)),
    }


def _measure(
    prepared: Prepared,
    path: Path,
    held: Sentences,
    progress: ProgressCallback | None = None,
    *,
    task: str = "Speaking",
) -> tuple[list[float], float | None]:
    """Per-sentence log-mel distances of `path` to FP32 on `held`, and its WER when `held`
    carries FP32 transcripts."""
    audio = speak(path, held.feeds, prepared.contract, prepared.threads, progress, task=task)
    dists = logmel_distances(audio, held.ref_audio)
    wer = None
    if held.ref_transcripts is not None:
        wer = word_error_rate(held.texts, transcribe_all(audio, prepared.threads, progress))
    return dists, wer


def _check_on(
    prepared: Prepared,
    path: Path,
    held: Sentences,
    budget: Budget,
    progress: ProgressCallback,
) -> dict[str, Any]:
    """Log-mel distance, WER and the budget's verdict for `path` on `held`."""
    dists, wer = _measure(
        prepared, path, held, progress, task=f"Confirming on {len(held.texts)} sentences"
    )
    logmel = _mean(dists)
    return {
        "sentences": len(held.texts),
        "logmel": logmel,
        "wer": wer,
        "meets": _meets(budget, logmel, wer, held.ref_wer),
    }


def final_speed(
    prepared: Prepared,
    path: Path,
    feeds: Sequence[dict[str, Any]],
    *,
    runs: int = 5,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Interleaved latency of `path` against the FP32 model (bench.ab)."""
    from kokoro_opt.bench.ab import ab_latency

    result = ab_latency(
        {"fp32": prepared.model_path, "pinned": path},
        list(feeds),
        runs=runs,
        warmup=1,
        threads=prepared.threads,
        progress=progress,
    )
    m = result["models"]
    return {
        "runs": runs,
        "texts": len(feeds),
        "fp32_median_ms": round(m["fp32"]["median_ms"], 1),
        "pinned_median_ms": round(m["pinned"]["median_ms"], 1),
        "speedup": round(1.0 / m["pinned"]["paired_ratio"], 3),
        "cpu_speedup": round(1.0 / m["pinned"]["cpu_paired_ratio"], 3),
    }


# -- helpers ------------------------------------------------------------------------------------


def _meets(budget: Budget, logmel: float, wer: float | None, ref_wer: float | None) -> bool:
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


def _timing_feeds(held: Sentences) -> list[dict[str, Any]]:
    """The median-length sentence (one input keeps each step's timing cheap)."""
    order = sorted(range(len(held.feeds)), key=lambda i: held.phonemes[i])
    return [held.feeds[order[len(order) // 2]]]


def _speedup(
    prepared: Prepared, path: Path, feeds: Sequence[dict[str, Any]], *, runs: int
) -> float:
    from kokoro_opt.bench.ab import ab_latency

    result = ab_latency(
        {"fp32": prepared.model_path, "variant": path},
        list(feeds),
        runs=runs,
        warmup=1,
        threads=prepared.threads,
    )
    return round(1.0 / result["models"]["variant"]["paired_ratio"], 3)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from kokoro_opt.report.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


# -- the report ---------------------------------------------------------------------------------


def write_search_report(
    result: dict[str, Any], prepared: Prepared, out_dir: Path, *, command: list[str] | None
) -> dict[str, Path]:
    """report.json/md/html in `out_dir`: the FP32 and chosen models, the interleaved speed
    comparison and the trade-off curve (one point per verified step)."""
    from kokoro_opt.graph.inspect import detect_quant_style
    from kokoro_opt.quality.asr import MODEL_NAME
    from kokoro_opt.report.meta import collect_run_meta
    from kokoro_opt.report.render import write_report_dir
    from kokoro_opt.report.schema import (
        Comparison,
        ModelEntry,
        QualityMetrics,
        Report,
        Tradeoff,
        TradeoffStep,
    )

    n = result["sentences"]
    entries = [
        ModelEntry(
            name="fp32",
            path=str(prepared.model_path),
            sha256=prepared.sha256,
            size_bytes=prepared.model_path.stat().st_size,
            quant_style="float",
            quality=QualityMetrics(n_utterances=n, wer=result["fp32_wer"]),
        )
    ]
    comparisons = []
    steps = []
    for step in result["steps"]:
        fidelity = step["logmel"] if math.isfinite(step["logmel"]) else 1e3
        steps.append(
            TradeoffStep(
                name=step["name"] + ": " + step["action"],
                speed=max(step["speedup"], 1e-6),
                fidelity=fidelity,
                wer=step["wer"],
                logmel_distance=fidelity,
                pinned=step["pinned"],
                accepted=step["meets"],
            )
        )
    chosen_name = None
    if result["chosen"] is not None:
        import onnx

        from kokoro_opt.graph.io import sha256_file

        path = Path(result["output"])
        step = next(s for s in result["steps"] if s["name"] == result["chosen"])
        chosen_name = f"{step['name']}: {step['action']}"
        style, _ = detect_quant_style(onnx.load(str(path), load_external_data=False))
        # the chosen model's quality on the largest set it was checked on
        checked = step.get("confirmation") or {**step, "sentences": n}
        if checked["sentences"] != n:
            entries[0].quality = QualityMetrics(
                n_utterances=checked["sentences"], wer=result["confirm"]["fp32_wer"]
            )
        entries.append(
            ModelEntry(
                name="pinned",
                path=str(path),
                sha256=sha256_file(path),
                size_bytes=path.stat().st_size,
                quant_style=style,
                quality=QualityMetrics(
                    n_utterances=checked["sentences"],
                    reference="fp32",
                    wer=checked["wer"],
                    logmel_distance=checked["logmel"],
                ),
            )
        )
        comparisons.append(
            Comparison(
                model="pinned",
                reference="fp32",
                speedup=result["final_speed"]["speedup"],
                n_texts=result["final_speed"]["texts"],
            )
        )
    tradeoff = Tradeoff(
        title="Pinning search: speed and fidelity of each verified step",
        speed_label="speedup vs FP32 (x), interleaved",
        fidelity_label="log-mel distance to FP32 (nepers)",
        budget=result["budget_text"],
        chosen=chosen_name,
        steps=steps,
    )
    notes = []
    if result["chosen"] is None:
        notes.append(f"No step met the budget ({result['budget_text']}).")
    else:
        final = result["final_speed"]
        notes.append(
            f"Chosen: pin {', '.join(result['pinned']) or 'nothing'}; "
            f"{final['speedup']:.2f}x FP32 ({final['pinned_median_ms']:.0f} vs "
            f"{final['fp32_median_ms']:.0f} ms, interleaved, {final['runs']} runs, "
            f"{final['texts']} text)."
        )
    notes.append(
        "Order tried: groups by log-mel distance when quantized alone per unit of FP32 time "
        "share; every step built from one calibration and verified end to end."
    )
    confirm = result.get("confirm")
    if confirm is not None:
        notes.append(
            f"The curve is measured on the first {n} held-out sentences; a step that met the "
            f"budget there was checked again on {confirm['sentences']} "
            f"({confirm['budget_text']}): "
            + "; ".join(
                f"{s['name']} log-mel {s['confirmation']['logmel']:.3f}"
                + (
                    ""
                    if s["confirmation"]["wer"] is None
                    else f", WER {s['confirmation']['wer'] * 100:.1f} %"
                )
                + (" holds" if s["confirmation"]["meets"] else " fails")
                for s in result["steps"]
                if s.get("confirmation")
            )
            + "."
        )
    run = collect_run_meta(
        provider="cpu",
        threads=prepared.threads,
        command=command,
        title="Pinning search",
        voice=result["voice"],
        lang="en-us",
        speed=1.0,
        texts=f"heldout (first {n})",
        asr_model=MODEL_NAME if result["fp32_wer"] is not None else None,
    )
    report = Report(
        run=run, models=entries, comparisons=comparisons, tradeoff=tradeoff, notes=notes
    )
    return write_report_dir(report, out_dir)
