"""Usage: python scripts/windowed_quality.py SPLIT_DIR N OUT.json CONFIGS_JSON [ASR_CONFIG_JSON]
(PRIMER=1: the server's 12-character first segment of each sentence instead).

Per held-out sentence: the `first` policy's audio (one approximate first window, then the exact
render) vs the same split model's whole-segment audio, cropped identically. The exact render is
computed once per sentence and reused (it is the same generator call for every first window)."""

import collections
import json
import os
import sys
from pathlib import Path

import numpy as np

from kokoro_opt.quality.asr import transcribe
from kokoro_opt.quality.distance import logmel_distance
from kokoro_opt.quality.wer import wer
from kokoro_opt.runtime.g2p import get_g2p
from kokoro_opt.runtime.tokenizer import tokenize
from kokoro_opt.runtime.voices import VoiceLibrary, style_for
from kokoro_opt.runtime.windowed import SplitModel, WindowPlan

folder, n, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
configs = json.loads(sys.argv[4])
asr_for = sys.argv[5] if len(sys.argv) > 5 else None
sm = SplitModel(folder, threads=1)
pack = VoiceLibrary.default().get("jf_gongitsune")
g2p = get_g2p("en-us")
heldout = Path(__file__).resolve().parents[1] / "calibration/en/heldout.txt"
texts = [line.strip() for line in heldout.read_text().splitlines() if line.strip()][:n]

if os.environ.get("PRIMER"):  # the server's first segment of each sentence (12-character primer)
    from kokoro_opt.server.segments import plan_segments

    texts = [
        plan_segments(t, first_chars=12, max_chars=300, growth=3.0, first="clause")[0]
        for t in texts
    ]
rows, hyp = [], {"whole": []}
orig = sm._run_back
for ti, text in enumerate(texts):
    toks = tokenize(g2p.phonemize(text))
    tokens = np.array([[0, *toks, 0]], np.int64)
    style = style_for(pack, len(toks)).reshape(1, -1)
    front = sm.run_front(tokens, style, 1.0)
    cache = {}

    def run_back(session, source, style_, front_, lo, hi, __o=orig, cache=cache):
        if lo == 0 and hi == front_.frames and session is sm.generator:
            if "g" not in cache:
                cache["g"] = __o(session, source, style_, front_, lo, hi)
            return cache["g"]
        return __o(session, source, style_, front_, lo, hi)

    sm._run_back = run_back
    exact = np.concatenate(
        list(sm.render(front, style, WindowPlan("first", ahead=0), spans=[(0, front.frames)]))
    )
    for c in configs:
        c = dict(c)
        rest_ms = c.pop("rest_ms", None)
        plan = WindowPlan(**c)
        sm.rest_s_per_frame = None if rest_ms is None else rest_ms / 1e3
        c["rest_ms"] = rest_ms
        spans = sm.windows(front, plan)
        out = np.concatenate(list(sm.render(front, style, plan, spans=spans)))
        skip = spans[0][0] * sm.samples_per_frame
        ref = exact[skip:]
        key = json.dumps(c, sort_keys=True)
        rows.append(
            {
                "text": ti,
                "cfg": key,
                "logmel": logmel_distance(out, ref),
                "len_ok": len(out) == len(ref),
                "frames": front.frames,
                "approx": spans[-1][0] - spans[0][0],
            }
        )
        if key == asr_for:
            hyp.setdefault(key, []).append(transcribe(out, 24000))
            if len(hyp["whole"]) <= ti:
                hyp["whole"].append(transcribe(ref, 24000))
    print(ti, flush=True)
    Path(out_path).write_text(json.dumps({"rows": rows, "hyp": hyp, "texts": texts[: ti + 1]}))
g = collections.defaultdict(list)
for r in rows:
    g[r["cfg"]].append(r)
summary = {}
for k, rs in g.items():
    s = {
        "n": len(rs),
        "logmel_mean": float(np.mean([r["logmel"] for r in rs])),
        "logmel_p90": float(np.percentile([r["logmel"] for r in rs], 90)),
        "logmel_max": float(np.max([r["logmel"] for r in rs])),
        "len_ok": all(r["len_ok"] for r in rs),
    }
    if k in hyp:
        s["wer"] = 100 * wer(texts, hyp[k])
        s["wer_whole"] = 100 * wer(texts, hyp["whole"])
    summary[k] = s
    print(k, s)
Path(out_path).write_text(
    json.dumps({"rows": rows, "hyp": hyp, "texts": texts, "summary": summary}, indent=1)
)
