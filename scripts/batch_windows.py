"""Does batching equal-size windows across streams pay on this machine? (The numbers behind
docs/findings/windowed.md, "Batching windows across streams".)

    python scripts/batch_windows.py /work/scratch/15/int8split --rounds 8 --context 6 -o b6.json
    python scripts/batch_windows.py /work/scratch/15/int8split --rounds 8 --part single -o b1.json

The split graphs take batch 1 only: `style` is [1, 256], and inside them the harmonic source,
the iSTFT and (in the cpu-int8 model) every instance norm are spelled for one sample
(InstanceNormalization's scale is per channel; rewrite_qlut's tables use a per-channel zero
point and [1, -1, 1] reshapes). Part `batch` cuts the generator's body out of generator.onnx
(`hidden` and the source spectrum -> conv_post: its convolutions and AdaINs, nearly all of its
time), respells those norms per sample (`batchable_body`; exact: the script checks that each
sample of a batched call equals its batch-1 call), and times one batched call of k windows
against the same k windows one by one, same session. Part `single` times whole windows of
generator.onnx (context 6) and back.onnx (context 14) at batch 1 against their size: the
per-call part of that cost is the most a batched call could share. Part `pair` runs two
streams' windows on two 1-thread sessions in two threads against one 2-thread session, one
window after the other (what the server's pool does today against what batching would replace).

Rounds are interleaved; medians over rounds (round 0 warms up). CPU time (the calling thread's
with one intra-op thread, the process's with two, spinning off as the runtime's sessions run)
does not count time spent waiting for a core, so it holds on a shared machine; wall time is
printed too but means little there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kokoro_opt.runtime.g2p import get_g2p  # noqa: E402
from kokoro_opt.runtime.tokenizer import tokenize  # noqa: E402
from kokoro_opt.runtime.voices import VoiceLibrary, style_for  # noqa: E402
from kokoro_opt.runtime.windowed import SplitModel  # noqa: E402

SOURCE_SPECTRUM = "/decoder/decoder/generator/Concat_3_output_0"
BODY_OUTPUT = "/decoder/decoder/generator/conv_post/Conv_output_0"
TEXT = (
    "The birch canoe slid on the smooth planks, and the sheet was glued to the dark blue "
    "background while the wind blew."
)
START = 20  # first window's first input frame; stream j starts 40 frames later
SIZES = (12, 24, 48)
STREAMS = 4


def batchable_body(generator: Any) -> Any:
    """The generator's body (hidden, source spectrum, style -> conv_post output) with a free
    batch dimension: instance norms and lookup tables spelled per sample (see module doc)."""
    from onnx import TensorProto, helper, numpy_helper

    producer = {o: n for n in generator.graph.node for o in n.output}
    inits = {t.name: t for t in generator.graph.initializer}
    inputs = ["hidden", SOURCE_SPECTRUM, "style"]
    keep: set[int] = set()
    stack = [BODY_OUTPUT]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if name in inputs or node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(node.input)
    body = [n for n in generator.graph.node if id(n) in keep]

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    per_sample = numpy_helper.from_array(np.array([0, -1, 1], np.int64), "batch/per_sample")
    merged = numpy_helper.from_array(np.array([1, -1, 0], np.int64), "batch/merged")
    nodes = []
    for node in body:
        shape = const(node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and shape.tolist() == [1, -1, 1]:
            # [B, C, 1] statistics and affines stay per sample ([0, -1, 1], not [1, -1, 1]);
            # an affine flattened to [C] first is taken before it was flattened.
            before = producer.get(node.input[0])
            if before is not None and before.op_type == "Reshape":
                flat = const(before.input[1])
                if flat is not None and flat.tolist() == [-1]:
                    node.input[0] = before.input[0]
            node.input[1] = per_sample.name
            nodes.append(node)
        elif node.op_type == "DequantizeLinear" and node.name.endswith("around_mean"):
            # u - zero_point with a per-channel zero point [C] -> u - nearest mean [B, C, 1]
            # (integers in float32: exact).
            nearest = producer[producer[node.input[2]].input[0]].input[0]
            as_float = node.output[0] + "/float"
            nodes.append(
                helper.make_node("Cast", [node.input[0]], [as_float], to=TensorProto.FLOAT)
            )
            nodes.append(helper.make_node("Sub", [as_float, nearest], [node.output[0]]))
        elif node.op_type == "InstanceNormalization":
            # [B, C, T] -> [1, B*C, T]: a norm per (sample, channel), scale and bias [B*C].
            x, y = node.input[0], node.output[0]
            nodes.append(helper.make_node("Reshape", [x, merged.name], [y + "/merged"]))
            nodes.append(helper.make_node("Shape", [x], [y + "/shape"]))
            node.input[0], node.output[0] = y + "/merged", y + "/normed"
            nodes.append(node)
            nodes.append(helper.make_node("Reshape", [y + "/normed", y + "/shape"], [y]))
        else:
            nodes.append(node)
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        "generator_body",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(BODY_OUTPUT, TensorProto.FLOAT, None)],
        [t for t in generator.graph.initializer if t.name in used] + [per_sample, merged],
    )
    model = helper.make_model(graph, opset_imports=generator.opset_import)
    model.ir_version = generator.ir_version
    return model


def timed(threads: int, call: Callable[[], Any]) -> tuple[Any, float, float]:
    clock = time.thread_time if threads == 1 else time.process_time
    c0, t0 = clock(), time.perf_counter()
    out = call()
    return out, (clock() - c0) * 1e3, (time.perf_counter() - t0) * 1e3


def in_two_threads(session: Any, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """`a` in this thread and `b` in another, at once (the pool's two 1-thread sessions)."""
    other = threading.Thread(target=session.run, args=(None, b))
    other.start()
    session.run(None, a)
    other.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path, help="a split folder (kokoro-opt split)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds; the first warms up")
    parser.add_argument("--context", type=int, nargs="+", default=[6], help="part batch")
    parser.add_argument("--part", choices=["batch", "single", "pair"], default="batch")
    parser.add_argument("--voice", default="jf_gongitsune")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON results")
    args = parser.parse_args()

    import onnx

    from kokoro_opt.runtime.session import create_session

    split = {t: SplitModel(args.split, threads=t) for t in (1, 2)}
    tokens = tokenize(get_g2p("en-us").phonemize(TEXT))
    style = style_for(VoiceLibrary.from_spec(None).get(args.voice), len(tokens)).reshape(1, -1)
    style = style.astype(np.float32)
    front = split[1].run_front(np.array([[0, *tokens, 0]], np.int64), style, 1.0)
    decoder = split[1].decoder
    feeds = {i.name: split[1]._feed(i.name, front.tensors, style) for i in decoder.get_inputs()}
    (hidden,) = decoder.run(None, feeds)
    generator_source = {"hidden": hidden, "f0": front.tensors["f0"]}
    styles = [style * (1 + 0.05 * j) for j in range(STREAMS)]  # another style per stream
    if front.frames < START + 40 * (STREAMS - 1) + max(SIZES) + 2 * max([14, *args.context]):
        raise SystemExit(f"{TEXT!r} is too short for these windows")
    results: dict[str, Any] = {"split": str(args.split), "part": args.part, "rounds": args.rounds}
    med = statistics.median

    if args.part == "batch":
        generator = onnx.load(args.split / "generator.onnx")
        generator.graph.output.append(
            onnx.helper.make_tensor_value_info(SOURCE_SPECTRUM, onnx.TensorProto.FLOAT, None)
        )
        spectrum_session = create_session(
            args.split / "generator.onnx", threads=1, model_bytes=generator.SerializeToString()
        )
        body_bytes = batchable_body(generator).SerializeToString()
        body = {
            t: create_session(args.split / "generator.onnx", threads=t, model_bytes=body_bytes)
            for t in (1, 2)
        }
        windows: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
        for context in args.context:
            for size in SIZES:
                wins = []
                for j in range(STREAMS):
                    lo = START + 40 * j
                    hi = lo + size + 2 * context
                    f = split[1].window_feeds(
                        spectrum_session, generator_source, styles[j], front, lo, hi
                    )
                    _, spectrum = spectrum_session.run(None, f)
                    wins.append(
                        {"hidden": f["hidden"], SOURCE_SPECTRUM: spectrum, "style": f["style"]}
                    )
                windows[(context, size)] = wins
        single: dict[tuple[int, ...], list[tuple[float, float]]] = {}
        batched: dict[tuple[int, ...], list[tuple[float, float]]] = {}
        diff: dict[tuple[int, ...], float] = {}
        for r in range(args.rounds):
            for (context, size), wins in windows.items():
                for t, s in body.items():
                    ys = []
                    for j, w in enumerate(wins):
                        y, cpu, wall = timed(t, lambda s=s, w=w: s.run(None, w)[0])
                        ys.append(y)
                        if r:
                            single.setdefault((context, size, t, j), []).append((cpu, wall))
                    for k in range(2, STREAMS + 1):
                        feed = {n: np.concatenate([w[n] for w in wins[:k]]) for n in wins[0]}
                        y, cpu, wall = timed(t, lambda s=s, feed=feed: s.run(None, feed)[0])
                        key = (context, size, t, k)
                        if r:
                            batched.setdefault(key, []).append((cpu, wall))
                        worst = max(float(np.abs(y[j : j + 1] - ys[j]).max()) for j in range(k))
                        diff[key] = max(diff.get(key, 0.0), worst)
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        rows = []
        for (context, size, t, k), runs in sorted(batched.items()):
            seq_cpu = sum(med([c for c, _ in single[(context, size, t, j)]]) for j in range(k))
            seq_wall = sum(med([w for _, w in single[(context, size, t, j)]]) for j in range(k))
            cpu, wall = med([c for c, _ in runs]), med([w for _, w in runs])
            rows.append({
                "window": size, "context": context, "threads": t, "k": k,
                "cpu_one_by_one_ms": round(seq_cpu, 1), "cpu_batched_ms": round(cpu, 1),
                "cpu_gain": round(seq_cpu / cpu, 3), "wall_one_by_one_ms": round(seq_wall, 1),
                "wall_batched_ms": round(wall, 1), "max_abs_diff": diff[(context, size, t, k)],
            })  # fmt: skip
        results["rows"] = rows
        for row in rows:
            print("| {window} | {context} | {threads} | {k} | {cpu_one_by_one_ms} | "
                  "{cpu_batched_ms} | {cpu_gain} | {max_abs_diff} |".format(**row))  # fmt: skip

    elif args.part == "single":
        graphs = {"generator": (6, generator_source), "back": (14, front.tensors)}
        runs: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            for name, (context, source) in graphs.items():
                for t, sm in split.items():
                    session = getattr(sm, name)
                    for size in (1, *SIZES, 96):
                        hi = START + size + 2 * context
                        f = sm.window_feeds(session, source, style, front, START, hi)
                        _, cpu, wall = timed(t, lambda session=session, f=f: session.run(None, f))
                        if r:
                            runs.setdefault((name, t, size), []).append((cpu, wall))
        rows = []
        for (name, t, size), v in sorted(runs.items()):
            rows.append({"graph": name, "threads": t, "window": size,
                         "frames": size + 2 * graphs[name][0],
                         "cpu_ms": round(med([c for c, _ in v]), 1),
                         "wall_ms": round(med([w for _, w in v]), 1)})  # fmt: skip
        for name in graphs:
            for t in split:
                pts = [(row["frames"], row["cpu_ms"]) for row in rows
                       if row["graph"] == name and row["threads"] == t]  # fmt: skip
                slope, intercept = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
                results[f"{name} threads{t} fit"] = {
                    "per_call_ms": round(float(intercept), 1),
                    "per_frame_ms": round(float(slope), 2),
                }
        results["rows"] = rows
        for row in rows:
            print(row)

    else:  # pair
        graphs = {"generator": (6, generator_source), "back": (14, front.tensors)}
        pairs: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        for r in range(args.rounds):
            for name, (context, source) in graphs.items():
                one, two = getattr(split[1], name), getattr(split[2], name)
                for size in SIZES:
                    span = size + 2 * context
                    a = split[1].window_feeds(one, source, styles[0], front, START, START + span)
                    lo = START + 40
                    b = split[1].window_feeds(one, source, styles[1], front, lo, lo + span)
                    _, cpu2, wall2 = timed(
                        2, lambda a=a, b=b, two=two: [two.run(None, a), two.run(None, b)]
                    )
                    _, cpu1, wall1 = timed(2, lambda a=a, b=b, one=one: in_two_threads(one, a, b))
                    if r:
                        pairs.setdefault((name, size), []).append((cpu2, wall2, cpu1, wall1))
        rows = []
        names = ("one_2thread_session_cpu_ms", "one_2thread_session_wall_ms",
                 "two_1thread_sessions_cpu_ms", "two_1thread_sessions_wall_ms")  # fmt: skip
        for (name, size), v in pairs.items():
            m = {key: round(med([x[i] for x in v]), 1) for i, key in enumerate(names)}
            rows.append({"graph": name, "window": size, **m})
        results["rows"] = rows
        for row in rows:
            print(row)
    args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
