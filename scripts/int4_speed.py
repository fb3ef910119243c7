"""Speed, CPU time and memory of INT4 models against FP32 (numbers behind docs/int4.md).

    python scripts/int4_speed.py reports/int4-trial/models/all-rtn-b128.onnx \\
        reports/int4-trial/models/mm-rtn-b32.onnx --rounds 5

The trial (`kokoro-opt int4 --trial`) times each model against FP32 with a few rounds; on a
shared machine that ratio is noisy. This script answers one question more carefully: what does
a model whose Conv weights are int4 `DequantizeLinear` cost per call, dequantizing on every call
(onnxruntime's default, "runtime") or folded once at load ("folded",
`session.disable_quant_qdq=1`)? Every session lives in one process; each round runs every
session once on each held-out text, alternating the order, with 2 intra-op threads. We report per
session the median wall time and process CPU time (all ORT threads) summed over the texts and
the median of the per-round ratios to FP32 (the number to trust on a busy machine). Memory: each
session is also built in a fresh process that runs one text, and we report its peak RSS and the
load time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kokoro_opt.passes.int4 import FOLD_SESSION_CONFIG  # noqa: E402

_MEMORY_PROBE = """
import json, resource, sys, time
import onnxruntime as ort
import numpy as np
path, fold, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
feed = {k: np.asarray(v, dtype=d) for k, (v, d) in json.loads(sys.stdin.read()).items()}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
if fold:
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
start = time.perf_counter()
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
load_s = time.perf_counter() - start
session.run(None, feed)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": load_s, "peak_rss_mb": peak / 1024, "base_rss_mb": before / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="INT4 .onnx files to time")
    parser.add_argument("--reference", default="kokoro-fp32", help="FP32 cache name or path")
    parser.add_argument("--texts", type=int, default=3, help="held-out texts, short to long")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: print)")
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort

    from kokoro_opt.calib.corpus import load_texts
    from kokoro_opt.calib.feeds import corpus_feeds
    from kokoro_opt.runtime.contract import ModelContract
    from kokoro_opt.runtime.session import session_options
    from kokoro_opt.store import resolve_model
    from kokoro_opt.trials.int4 import _has_weight_dq

    reference = resolve_model(args.reference)
    contract = ModelContract.from_onnx(onnx.load(str(reference), load_external_data=False))
    samples, feeds = corpus_feeds(
        load_texts("heldout")[:40], contract, count=40, voices=["jf_gongitsune"], speeds=[1.0]
    )
    order = sorted(range(len(samples)), key=lambda i: samples[i].n_phonemes)
    picks = sorted({order[int(i)] for i in np.linspace(0, len(order) - 1, args.texts).round()})
    chosen = [feeds[i] for i in picks]

    def session(path: Path, fold: bool) -> Any:
        opts = session_options(args.threads)
        if fold:
            for key, value in FOLD_SESSION_CONFIG.items():
                opts.add_session_config_entry(key, value)
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    plan: list[tuple[str, Path, bool]] = [("fp32", reference, False)]
    for path in args.models:
        plan.append((path.stem, path, False))
        if _has_weight_dq(onnx.load(str(path), load_external_data=False)):
            plan.append((f"{path.stem}+fold", path, True))
    sessions = {label: session(path, fold) for label, path, fold in plan}
    for sess in sessions.values():  # warm-up
        for feed in chosen:
            sess.run([contract.audio], feed)
    wall: dict[str, list[float]] = {label: [] for label in sessions}
    cpu: dict[str, list[float]] = {label: [] for label in sessions}
    labels = list(sessions)
    for r in range(args.rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            w = c = 0.0
            for feed in chosen:
                w0, c0 = time.perf_counter(), time.process_time()
                sessions[label].run([contract.audio], feed)
                w += time.perf_counter() - w0
                c += time.process_time() - c0
            wall[label].append(w * 1e3)
            cpu[label].append(c * 1e3)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    del sessions

    probe_feed = json.dumps(
        {k: (np.asarray(v).tolist(), str(np.asarray(v).dtype)) for k, v in chosen[-1].items()}
    )
    results: dict[str, Any] = {
        "texts": [samples[i].text for i in picks],
        "phonemes": [samples[i].n_phonemes for i in picks],
        "rounds": args.rounds,
        "threads": args.threads,
        "sessions": {},
    }
    for label, path, fold in plan:
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                _MEMORY_PROBE,
                str(path),
                "1" if fold else "0",
                str(args.threads),
            ],
            input=probe_feed,
            capture_output=True,
            text=True,
            check=True,
        )
        memory = json.loads(probe.stdout)
        results["sessions"][label] = {
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "wall_ms_median": round(statistics.median(wall[label]), 1),
            "cpu_ms_median": round(statistics.median(cpu[label]), 1),
            "wall_ratio_to_fp32": round(
                statistics.median(a / b for a, b in zip(wall[label], wall["fp32"], strict=True)), 3
            ),
            "cpu_ratio_to_fp32": round(
                statistics.median(a / b for a, b in zip(cpu[label], cpu["fp32"], strict=True)), 3
            ),
            "load_s": round(memory["load_s"], 2),
            "peak_rss_mb": round(memory["peak_rss_mb"], 1),
        }
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
