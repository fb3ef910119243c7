"""What verifying a cached model costs on a cold `kokoro-opt speak` (numbers behind
docs/model-store.md).

    python scripts/verify_cost.py --model kokoro-fp32 --rounds 7

Each run is a fresh process running the CLI's `speak` (the page cache is warm for every run:
the same conditions). Three variants, interleaved in every round: `off` (verification replaced
by a no-op), `fingerprint` (the default; the file is unchanged since its last full check) and
`full` (the fingerprint is deleted first, so the load hashes the whole file). For every run:
wall time, the child's CPU time (user + sys, all threads) and, measured inside the process, the
seconds spent in `verify_model`. Prints the medians and the check's median share of the wall
time; on a busy machine the in-process share is the number to trust, since whole-process times
vary by more than the check costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEXT = "The birch canoe slid on the smooth planks."
WRAPPER = """
import atexit, sys, time
import kokoro_opt.store.verify as v
spent = [0.0]
real = v.verify_model
def timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return None if OFF else real(*args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - start
v.verify_model = timed
atexit.register(lambda: sys.stderr.write(f"VERIFY_S {spent[0]:.6f}\\n"))
from kokoro_opt.cli import main
sys.argv[0] = "kokoro-opt"
main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kokoro-fp32", help="A cached model name.")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("verify-cost.wav"))
    args = parser.parse_args()

    from kokoro_opt.store import model_file

    path = model_file(args.model)
    stamp = path.parent / ".verified" / f"{path.stem}.json"
    argv = ["speak", TEXT, "-o", str(args.out), "--model", args.model, "--threads", "2", "--json"]

    def once(variant: str) -> tuple[float, float, float]:
        if variant == "full":
            stamp.unlink(missing_ok=True)
        code = f"OFF = {variant == 'off'}\n" + WRAPPER
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, float(done.stderr.split("VERIFY_S ")[1].split()[0])

    runs: dict[str, list[tuple[float, float, float]]] = {"off": [], "fingerprint": [], "full": []}
    once("fingerprint")  # warm the page cache and record the fingerprint
    for n in range(args.rounds):
        for variant, rows in runs.items():
            rows.append(once(variant))
        print(n, {k: [round(x, 3) for x in rows[-1]] for k, rows in runs.items()}, flush=True)
    summary = {
        variant: {
            "wall_s": statistics.median(r[0] for r in rows),
            "cpu_s": statistics.median(r[1] for r in rows),
            "verify_s": statistics.median(r[2] for r in rows),
            "verify_share_of_wall_pct": statistics.median(100 * r[2] / r[0] for r in rows),
        }
        for variant, rows in runs.items()
    }
    print(json.dumps({"model": str(path), "bytes": path.stat().st_size, **summary}, indent=1))


if __name__ == "__main__":
    main()
