"""The measuring core: per-sentence fidelity tasks, where they run, and the reference sets.

- `executors`: `local`, `processes[:N]`, `ray[:ADDRESS]` run independent tasks and return
  results in order; files reach workers by content hash (`FileRef`).
- `score`: the tasks (one sentence through one or several models, transcribed and compared)
  and the pure helpers (`mean`, `word_error_rate`).
- `reference`: held-out sentences as model inputs with the FP32 audio and transcripts, cached
  by model sha256 and input hash.
- `workers`: the sessions a worker keeps between tasks.

Timing never runs on an executor: it runs serially and interleaved on this machine
(`bench.ab`, `bench.harness`), and reports say where.
"""
