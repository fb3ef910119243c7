"""Measurements behind docs/int8-static.md, section "Issue 18", reproducible on the real model.

    python scripts/int8_static_measure.py memory MODEL OUT.onnx   # peak RSS per phase of quantize
    python scripts/int8_static_measure.py sessions FP32 INT8      # session settings, interleaved

`memory` runs the static INT8 pass (the defaults) on MODEL as `kokoro-opt quantize` does, with a
thread that reads the process's resident set every 0.1 s; the phases are the pass's progress
labels. Run it under `/usr/bin/time -v` for the whole process's maximum.

`sessions` times plain ONNX Runtime sessions interleaved in one process (each round runs every
session once per sentence), 2 intra-op threads, voice jf_gongitsune, speed 1: FP32 as the
runtime opens it, then the INT8 model with ORT's defaults as the runtime sets them and with one
setting changed at a time (spinning on, arena off, graph level extended). The speedup is the
geometric mean over sentences of FP32's median over the session's median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("default", "spin", "no-arena", "extended")


def _rss_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def memory(model_path: Path, out: Path) -> None:
    from kokoro_opt.passes import quantize_static
    from kokoro_opt.passes.base import PassContext

    phase = ["load"]
    peaks: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), _rss_gb())
            time.sleep(0.1)

    def progress(task: str, completed: int, total: int) -> None:
        phase[0] = task

    threading.Thread(target=sample, daemon=True).start()
    model = onnx.load(str(model_path))  # held for the whole pass, as apply_pass holds it
    phase[0] = "start"
    ctx = PassContext(work_dir=out.with_suffix(".work"), progress=progress, threads=2)
    result = quantize_static.run(model, quantize_static.Config(), ctx)
    phase[0] = "save"
    onnx.save(result.model, str(out))
    done.set()
    for name, peak in peaks.items():
        print(f"{name:24s} {peak:5.2f} GB")


def _options(variant: str) -> Any:
    import onnxruntime as ort

    from kokoro_opt.runtime.session import session_options

    opts = session_options(2, allow_spinning=variant == "spin")
    if variant == "no-arena":
        opts.enable_cpu_mem_arena = False
    if variant == "extended":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return opts


def sessions(fp32: Path, int8: Path, start: int, count: int, rounds: int) -> None:
    import onnxruntime as ort

    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import phonemize_texts
    from kokoro_opt.runtime.contract import ModelContract
    from kokoro_opt.runtime.tokenizer import PAD_ID, tokenize
    from kokoro_opt.runtime.voices import VoiceLibrary, style_for

    texts = load_texts("heldout")[start : start + count]
    pack = VoiceLibrary.default().get("jf_gongitsune")
    contract = ModelContract.from_onnx(onnx.load(str(fp32), load_external_data=False))
    feeds = []
    for phonemes in phonemize_texts(texts, lang="en-us"):
        tokens = tokenize(phonemes)
        feeds.append(contract.feeds([PAD_ID, *tokens, PAD_ID], style_for(pack, len(tokens)), 1.0))
    runs = {"fp32": (fp32, "default")} | {f"int8 {v}": (int8, v) for v in VARIANTS}
    open_sessions = {
        name: ort.InferenceSession(str(path), _options(v), providers=["CPUExecutionProvider"])
        for name, (path, v) in runs.items()
    }
    for session in open_sessions.values():
        session.run(None, feeds[0])
    times: dict[str, list[list[float]]] = {name: [[] for _ in feeds] for name in open_sessions}
    for _ in range(rounds):
        for i, feed in enumerate(feeds):
            for name, session in open_sessions.items():
                t0 = time.perf_counter()
                session.run(None, feed)
                times[name][i].append(time.perf_counter() - t0)
    reference = np.array([statistics.median(t) for t in times["fp32"]])
    print(f"held-out sentences {start + 1}-{start + count}, {rounds} rounds, interleaved")
    for name, per_text in times.items():
        medians = np.array([statistics.median(t) for t in per_text])
        speedup = float(np.exp(np.mean(np.log(reference / medians))))
        print(f"{name:16s} {medians.sum() * 1000:8.0f} ms  {speedup:.2f}x FP32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("model", type=Path)
    mem.add_argument("out", type=Path)
    ses = sub.add_parser("sessions")
    ses.add_argument("fp32", type=Path)
    ses.add_argument("int8", type=Path)
    ses.add_argument("--start", type=int, default=20, help="first held-out sentence (0-based)")
    ses.add_argument("--count", type=int, default=3)
    ses.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "memory":
        memory(args.model, args.out)
    else:
        sessions(args.fp32, args.int8, args.start, args.count, args.rounds)


if __name__ == "__main__":
    main()
