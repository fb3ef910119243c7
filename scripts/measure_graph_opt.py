"""Measurements behind docs/graph-optimization.md (issue 7), reproducible on the real model.

    python scripts/measure_graph_opt.py noise      # float-noise floor of the audio check
    python scripts/measure_graph_opt.py rewrites   # each rewrite alone and chained, FP32
    python scripts/measure_graph_opt.py int8       # optimize chain on the INT8 export
    python scripts/measure_graph_opt.py portable   # --portable audio equality, FP32 and INT8
    python scripts/measure_graph_opt.py quantize   # optimize --for-quantization + quantize vs alone
    python scripts/measure_graph_opt.py buckets    # static buckets vs the dynamic model
    python scripts/measure_graph_opt.py profile    # ORT op profile before/after optimize

Every timing is interleaved in one process (each round runs every model once, alternating the
order) with 2 intra-op threads; we report medians, minimums and the median of per-round ratios
to the first model, which is what holds on a shared machine. Results go to
docs/data/graph-opt-<section>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kokoro_opt.bench.ab import ab_latency  # noqa: E402
from kokoro_opt.graph.edit import non_standard_ops  # noqa: E402
from kokoro_opt.measure.reference import compare_audio, compare_models  # noqa: E402
from kokoro_opt.passes import (  # noqa: E402
    optimize,
    portable,
    rewrite_conv2d,
    rewrite_instnorm,
    rewrite_snake,
    rewrite_stft,
    rewrites,
    static_shapes,
)
from kokoro_opt.passes.base import PassContext  # noqa: E402
from kokoro_opt.passes.verify import REFERENCE_PHONEMES, reference_feeds  # noqa: E402
from kokoro_opt.store import ensure_default_models  # noqa: E402

THREADS = 2
SPEED_PHONEMES = [REFERENCE_PHONEMES[1]]  # 69 phonemes, 5.6 s of audio


def _ctx(tmp: Path) -> PassContext:
    return PassContext(work_dir=tmp, threads=THREADS)


def _log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def _save(models: dict[str, onnx.ModelProto], tmp: Path) -> dict[str, Path]:
    paths = {}
    for i, (label, model) in enumerate(models.items()):
        path = tmp / f"v{i}.onnx"
        onnx.save(model, path)
        paths[label] = path
    return paths


def _time(paths: dict[str, Path], runs: int, feeds_from: Path | None = None) -> dict[str, Any]:
    feeds = reference_feeds(feeds_from or next(iter(paths.values())), phonemes=SPEED_PHONEMES)
    _log(f"timing {len(paths)} models x {runs} runs")
    return ab_latency(paths, feeds, runs=runs, threads=THREADS)


def _summary(paths: dict[str, Path], timing: dict[str, Any], ref: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref_feeds = reference_feeds(paths[ref])
    for label, path in paths.items():
        model = onnx.load(str(path), load_external_data=False)
        entry: dict[str, Any] = {
            "nodes": len(model.graph.node),
            "bytes": path.stat().st_size,
            "timing": {k: v for k, v in timing["models"][label].items() if k != "runs_ms"},
        }
        if label != ref:
            _log("checking audio of", label)
            check = compare_models(paths[ref], path, ref_feeds, threads=THREADS)
            entry["audio"] = {k: v for k, v in check.items() if k != "items"}
            entry["audio"]["items"] = [
                {k: round(v, 5) if isinstance(v, float) else v for k, v in item.items()}
                for item in check["items"]
            ]
        out[label] = entry
    return out


# -- sections ----------------------------------------------------------------------------------


def noise(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The same FP32 model under different ORT optimization levels and thread counts."""
    import onnxruntime as ort

    path = ensure_default_models()["kokoro-fp32"]
    feeds = reference_feeds(path)
    outs = {}
    levels = {
        "all-2t": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 2),
        "all-1t": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 1),
        "extended-2t": (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, 2),
        "basic-2t": (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, 2),
        "disabled-2t": (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 2),
    }
    for label, (level, threads) in levels.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outs[label] = [session.run(None, f)[0].reshape(-1) for f in feeds]
        _log("rendered", label)
    ref = outs["all-2t"]
    return {
        label: {
            k: v
            for k, v in compare_audio(ref, got).items()
            if k in ("max_abs_diff", "max_logmel_distance", "same_lengths")
        }
        | {
            "per_item_logmel": [
                round(i["logmel_distance"], 5) for i in compare_audio(ref, got)["items"]
            ]
        }
        for label, got in outs.items()
        if label != "all-2t"
    }


def rewrites_section(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    path = ensure_default_models()["kokoro-fp32"]
    base = onnx.load(path)
    ctx = _ctx(tmp)
    models: dict[str, onnx.ModelProto] = {"fp32": base}
    normed = rewrite_instnorm.run(base, rewrite_instnorm.Config(), ctx).model
    models["instnorm"] = normed
    models["snake:square"] = rewrite_snake.run(base, rewrite_snake.Config(form="square"), ctx).model
    models["snake:cos"] = rewrite_snake.run(base, rewrite_snake.Config(form="cos"), ctx).model
    models["snake:fold"] = rewrite_snake.run(base, rewrite_snake.Config(), ctx).model
    models["instnorm+snake"] = rewrite_snake.run(normed, rewrite_snake.Config(), ctx).model
    models["stft"] = rewrite_stft.run(base, rewrite_stft.Config(), ctx).model
    models["conv2d"] = rewrite_conv2d.run(base, rewrite_conv2d.Config(), ctx).model
    models["default"] = rewrites.apply(base, list(rewrites.DEFAULT), ctx).model
    models["all"] = rewrites.apply(base, list(rewrites.ORDER), ctx).model
    paths = _save(models, tmp)
    timing = _time(paths, args.runs)
    return _summary(paths, timing, "fp32")


def _chain(model: onnx.ModelProto, tmp: Path, **config: Any) -> tuple[onnx.ModelProto, dict]:
    result = optimize.run(model, optimize.Config(**config), _ctx(tmp))
    return result.model, result.details


def int8(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The optimize chain on the INT8 export (and on the FP32 reference), timed, and compared
    with the model it came from and, for INT8, with the FP32 reference: dynamic quantization
    re-rounds every activation, so any float change upstream moves some values by one step."""
    models_in = ensure_default_models()
    fp32_path = models_in["kokoro-fp32"]
    out: dict[str, Any] = {}
    for name in ("kokoro-int8-export", "kokoro-fp32"):
        base = onnx.load(models_in[name])
        optimized, details = _chain(base, tmp)
        variants = {name: base, f"{name}+optimize": optimized}
        if name == "kokoro-int8-export":
            variants[f"{name}+optimize --no-simplify"] = _chain(base, tmp, simplify=False)[0]
        stages = {
            k: {kk: vv for kk, vv in v.items() if kk in ("nodes_before", "nodes_after", "fused")}
            for k, v in details["stages"].items()
            if k != "rewrites"
        }
        keep = ("matched", "rewritten", "in_norm", "into_conv")
        stages["rewrites"] = {
            k: {kk: vv for kk, vv in v.items() if kk in keep}
            for k, v in details["stages"].get("rewrites", {}).items()
        }
        paths = _save(variants, tmp)
        timing = _time(paths, args.runs)
        summary = _summary(paths, timing, name)
        if name == "kokoro-int8-export":
            for label, path in paths.items():
                _log("checking against fp32:", label)
                check = compare_models(fp32_path, path, reference_feeds(fp32_path), threads=THREADS)
                summary[label]["audio_vs_fp32"] = {
                    "max_logmel_distance": check["max_logmel_distance"],
                    "per_item_logmel": [round(i["logmel_distance"], 4) for i in check["items"]],
                    "per_item_duration_ratio": [
                        round(i["samples_test"] / i["samples_reference"], 4) for i in check["items"]
                    ],
                }
        out[name] = {
            "summary": summary,
            "stages": stages,
            "ops_before": details["ops_before"],
            "ops_after": details["ops_after"],
        }
    return out


def portable_section(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    models_in = ensure_default_models()
    out: dict[str, Any] = {}
    for name in ("kokoro-fp32", "kokoro-int8-export"):
        base = onnx.load(models_in[name])
        alone = portable.run(base, portable.Config(), _ctx(tmp))
        chained, _ = _chain(base, tmp, level="basic", portable=True)
        paths = _save({name: base, "portable": alone.model, "optimize --portable": chained}, tmp)
        timing = _time(paths, args.runs)
        out[name] = _summary(paths, timing, name)
        out[name]["portable"]["rewritten"] = alone.details["rewritten"]
        out[name]["optimize --portable"]["non_standard_ops"] = non_standard_ops(chained)
    return out


def _base_name(name: str) -> str:
    """A node's name before the rewrites (conv2d names the lifted Conv '<old>/conv2d')."""
    return name.removesuffix("/conv2d")


def quantize(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Static INT8 with the `kokoro-opt quantize` defaults alone vs `optimize --for-quantization`
    then the same quantize (and each followed by ORT's extended level), vs the INT8 export:
    which convs each quantized (node names change under the rewrites), timed interleaved, audio
    compared with FP32."""
    from kokoro_opt.passes import quantize_static

    models_in = ensure_default_models()
    fp32 = onnx.load(models_in["kokoro-fp32"])
    ctx = _ctx(tmp)
    qconfig = quantize_static.Config(samples=args.samples)
    _log("optimize --for-quantization")
    prepared, prep_details = _chain(fp32, tmp, **optimize.FOR_QUANTIZATION)
    selection = {}
    for label, model in (("quantize", fp32), ("optimize --for-quantization -> quantize", prepared)):
        picked = quantize_static.select_nodes(model, qconfig)
        selection[label] = {
            "candidates": picked["candidates"],
            "quantize": len(picked["quantize"]),
            "unmatched_patterns": picked["unmatched"],
            "names": sorted(_base_name(n) for n in picked["quantize"]),
        }
    names = [s.pop("names") for s in selection.values()]
    same_convs = names[0] == names[1]
    _log("quantize fp32 (defaults)")
    alone = quantize_static.run(fp32, qconfig, ctx)
    _log("quantize the --for-quantization model (defaults)")
    chained = quantize_static.run(prepared, qconfig, ctx)
    del prepared
    chain_label = "optimize --for-quantization -> quantize"
    for label, result in (("quantize", alone), (chain_label, chained)):
        selection[label]["manifest_quantized"] = result.details["quantized"]
        selection[label]["int8_weights_float_compute"] = result.details[
            "int8_weights_float_compute"
        ]
    _log("ORT extended on each quantized model")
    alone_ext, _ = _chain(alone.model, tmp, simplify=False, fusion=False, rewrites=[])
    chained_ext, _ = _chain(chained.model, tmp, simplify=False, fusion=False, rewrites=[])
    models = {
        "fp32": fp32,
        "int8-export": onnx.load(models_in["kokoro-int8-export"]),
        "quantize": alone.model,
        "optimize --for-quantization -> quantize": chained.model,
        "quantize -> ORT extended": alone_ext,
        "optimize --for-quantization -> quantize -> ORT extended": chained_ext,
    }
    del alone, chained
    paths = _save(models, tmp)
    del models
    timing = _time(paths, args.runs)
    return {
        "quantize_settings": qconfig.model_dump(mode="json"),
        "for_quantization": optimize.FOR_QUANTIZATION,
        "for_quantization_rewrites": {
            k: {kk: vv for kk, vv in v.items() if kk in ("matched", "rewritten", "into_conv")}
            for k, v in prep_details["stages"].get("rewrites", {}).items()
        },
        "selection": selection,
        "same_convs_quantized": same_convs,
        "models": _summary(paths, timing, "fp32"),
    }


def buckets(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Each bucket vs the dynamic model on the longest reference utterance that fits it."""
    from kokoro_opt.runtime.tokenizer import tokenize

    path = ensure_default_models()["kokoro-fp32"]
    base = onnx.load(path)
    out: dict[str, Any] = {}
    for t in args.tokens:
        fits = [p for p in REFERENCE_PHONEMES if len(tokenize(p)) + 2 <= t]
        phonemes = [max(fits, key=lambda p: len(tokenize(p)))]
        _log("bind", t)
        bound = static_shapes.run(base, static_shapes.Config(tokens=t), _ctx(tmp))
        bpath = tmp / f"b{t}.onnx"
        onnx.save(bound.model, bpath)
        check = compare_models(
            path,
            bpath,
            reference_feeds(path, phonemes=phonemes),
            test_feeds=reference_feeds(bpath, phonemes=phonemes),
            threads=THREADS,
        )
        feeds = {
            "dynamic": reference_feeds(path, phonemes=phonemes),
            "bucket": reference_feeds(bpath, phonemes=phonemes),
        }
        timing = ab_latency(
            {"dynamic": path, "bucket": bpath}, feeds, runs=args.runs, threads=THREADS
        )
        out[str(t)] = {
            "phonemes": len(tokenize(phonemes[0])),
            "length_mask": bound.details["length_mask"],
            "nodes": len(bound.model.graph.node),
            "static_tensors": bound.details["static_tensors"],
            "audio": {k: v for k, v in check.items() if k != "items"},
            "timing": {
                k: {kk: vv for kk, vv in v.items() if kk != "runs_ms"}
                for k, v in timing["models"].items()
            },
        }
        bpath.unlink()
    return out


def profile(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """ORT's op profile (share of kernel time per op type) before and after `optimize`."""
    import collections

    import onnxruntime as ort

    path = ensure_default_models()["kokoro-fp32"]
    optimized, _ = _chain(onnx.load(path), tmp)
    opath = tmp / "optimized.onnx"
    onnx.save(optimized, opath)
    out = {}
    for label, p in (("fp32", path), ("optimized", opath)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.enable_profiling = True
        opts.profile_file_prefix = str(tmp / label)
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        feeds = reference_feeds(p, phonemes=SPEED_PHONEMES)
        for _ in range(3):
            session.run(None, feeds[0])
        events = json.loads(Path(session.end_profiling()).read_text())
        by_op: collections.Counter[str] = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]] += e["dur"]
        total = sum(by_op.values())
        out[label] = {
            "kernel_ms_per_run": round(total / 3 / 1000, 1),
            "share": {k: round(100 * v / total, 1) for k, v in by_op.most_common(15)},
        }
    return out


SECTIONS = {
    "noise": noise,
    "rewrites": rewrites_section,
    "int8": int8,
    "portable": portable_section,
    "quantize": quantize,
    "buckets": buckets,
    "profile": profile,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", choices=sorted(SECTIONS))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--samples", type=int, default=32, help="calibration samples (quantize)")
    parser.add_argument(
        "--tokens", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256, 512]
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "docs" / "data" / f"graph-opt-{args.section}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graph-opt-") as tmp:
        started = time.perf_counter()
        result = SECTIONS[args.section](args, Path(tmp))
    import onnxruntime

    payload = {
        "section": args.section,
        "runs": args.runs,
        "threads": THREADS,
        "onnxruntime": onnxruntime.__version__,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "result": result,
    }
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _log("wrote", out)


if __name__ == "__main__":
    main()
