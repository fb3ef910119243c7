"""Where the independent tasks of a measurement run: this process, worker processes on this
machine, or a Ray cluster.

    with parse_executor("processes:2") as executor:
        model = executor.share(path)                 # a FileRef any worker can open
        threads = executor.task_threads(requested)   # per task, so cores are not oversubscribed
        results = executor.map(fn, tasks, progress=report, label="Scoring")

`fn` is a module-level function of one picklable task; `map` returns its results in the order
of `tasks`, whichever worker finished first, so a measurement does not depend on the executor.
Files reach workers by content (`FileRef`: sha256 + a path only where the worker shares this
machine's disk, or the bytes in Ray's object store), never by a path only the head has.
Timing is not an executor task: it always runs serially on the head (see `measure.timing`).

- `local`: every task in this process, one after another (the default).
- `processes[:N]`: N worker processes (default: the number of cores), each with its own ONNX
  Runtime sessions and ASR, each task with cores // N threads.
- `ray[:ADDRESS]`: Ray tasks (`pip install -e ".[ray]"`); `ray` starts a local cluster for the
  run, `ray:auto` or `ray:HOST:PORT` joins a running one (kokoro-opt must be installed on its
  nodes). Each task asks Ray for as many CPUs as it uses threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kokoro_opt.errors import UserInputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
ProgressCallback = Callable[[str, int, int], None]

EXECUTOR_HELP = (
    "Where the measuring tasks run: local (this process), processes[:N] (N worker processes, "
    "default one per core) or ray[:ADDRESS] (a Ray cluster: 'ray' starts a local one, "
    "'ray:auto' joins a running one). Results are the same; timing always runs here, serially."
)


@dataclass(frozen=True)
class FileRef:
    """A file as workers see it: its content hash, plus where to read it.

    `path` is set when the worker shares this machine's disk (local, processes); `blob` holds
    a Ray object reference to the bytes otherwise. `open()` (in the worker) returns a local
    path: `path`, or the content-addressed copy under the kokoro-opt cache, fetched once."""

    sha256: str
    name: str
    path: str | None = None
    blob: Any = None

    def open(self) -> Path:
        if self.path is not None:
            return Path(self.path)
        from kokoro_opt.store.cache import cache_dir

        local = cache_dir() / "measure" / "files" / f"{self.sha256}{Path(self.name).suffix}"
        if local.is_file():
            return local
        if self.blob is None:
            raise UserInputError(f"{self.name} ({self.sha256[:12]}) is not on this worker.")
        import ray

        data = ray.get(self.blob)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise UserInputError(f"{self.name} arrived damaged (sha256 mismatch); run again.")
        from kokoro_opt.report.files import write_bytes_atomic

        return write_bytes_atomic(local, data)


class Executor:
    """Runs tasks in this process, one after another (`local`); the base of the others."""

    kind = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._shared: dict[str, tuple[tuple[int, int], FileRef]] = {}

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.kind

    def task_threads(self, requested: int | None) -> int | None:
        """Threads each task should use: what was asked (None = ONNX Runtime's default)."""
        return requested

    def share(self, path: Path, sha256: str | None = None) -> FileRef:
        """A reference to `path` that this executor's workers can open."""
        path = Path(path).resolve()
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        known = self._shared.get(str(path))
        if known is None or known[0] != key:  # a new file, or new content at the same path
            from kokoro_opt.graph.io import sha256_file

            self._shared[str(path)] = (key, self._ref(path, sha256 or sha256_file(path)))
        return self._shared[str(path)][1]

    def _ref(self, path: Path, sha: str) -> FileRef:
        return FileRef(sha256=sha, name=path.name, path=str(path.resolve()))

    def map(
        self,
        fn: Callable[[T], R],
        tasks: Sequence[T],
        *,
        progress: ProgressCallback | None = None,
        label: str = "Measuring",
    ) -> list[R]:
        """`fn(task)` for every task, results in the order of `tasks`; `progress(label, done,
        total)` after each task finishes, in whatever order they finish."""
        out: list[Any] = [None] * len(tasks)
        for done, (index, result) in enumerate(self._completed(fn, tasks), start=1):
            out[index] = result
            if progress:
                progress(label, done, len(tasks))
        return out

    def _completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        """(index, result) of each task as it finishes."""
        for i, task in enumerate(tasks):
            yield i, fn(task)

    def close(self) -> None:
        from kokoro_opt.measure import workers

        workers.clear()


class ProcessExecutor(Executor):
    """`processes[:N]`: a pool of N spawned worker processes on this machine."""

    kind = "processes"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers or _cores())
        self._pool: Any = None

    def describe(self) -> str:
        return f"processes:{self.workers}"

    def task_threads(self, requested: int | None) -> int | None:
        return max(1, (requested or _cores()) // self.workers)

    def _completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        import concurrent.futures as cf
        import multiprocessing

        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        futures = {self._pool.submit(fn, task): i for i, task in enumerate(tasks)}
        for future in cf.as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """`ray[:ADDRESS]`: Ray tasks on a cluster (a local one started for the run by default)."""

    kind = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserInputError(
                '--executor ray needs Ray: pip install -e ".[ray]" (or pip install ray).'
            ) from None
        self.address = address
        if not ray.is_initialized():
            if address is None:
                # On a cluster started for this run: Ray nices task workers to 15 (on a shared
                # machine they would starve behind everything else, while measuring is the job
                # here), and its memory monitor kills tasks when the whole machine is above
                # 95 % memory, other people's processes included (the kernel's OOM killer
                # still guards the machine).
                os.environ.setdefault("RAY_worker_niceness", "0")
                os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        super().__init__(int(ray.cluster_resources().get("CPU", 1)))
        self._remote: dict[Any, Any] = {}

    def describe(self) -> str:
        where = self.address or "local cluster"
        return f"ray:{self.address}" if self.address else f"ray ({where}, {self.workers} CPUs)"

    def task_threads(self, requested: int | None) -> int | None:
        return max(1, requested or 1)

    def _ref(self, path: Path, sha: str) -> FileRef:
        import ray

        return FileRef(sha256=sha, name=path.name, blob=ray.put(path.read_bytes()))

    def _completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        import ray

        if not tasks:
            return
        cpus = getattr(tasks[0], "threads", None) or 1
        key = (fn, cpus)
        if key not in self._remote:
            self._remote[key] = ray.remote(num_cpus=min(cpus, self.workers))(fn)
        refs = {self._remote[key].remote(task): i for i, task in enumerate(tasks)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield refs[ready[0]], ray.get(ready[0])

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def parse_executor(spec: str | None) -> Executor:
    """`local`, `processes`, `processes:N`, `ray`, `ray:auto` or `ray:ADDRESS` -> an Executor."""
    text = (spec or "local").strip()
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if kind == "local" and not arg:
        return Executor()
    if kind == "processes":
        if not arg:
            return ProcessExecutor()
        if arg.isdigit() and int(arg) >= 1:
            return ProcessExecutor(int(arg))
        raise UserInputError(
            f"--executor processes:{arg}: the number of worker processes must be a whole "
            "number of at least 1, such as processes:2."
        )
    if kind == "ray":
        return RayExecutor(arg or None)
    raise UserInputError(
        f"Unknown executor {text!r}: use local, processes[:N] or ray[:ADDRESS] "
        "(such as processes:2 or ray:auto)."
    )


def check_executor(spec: str | None) -> str:
    """The spec, checked without starting anything (for the CLI before work begins)."""
    text = (spec or "local").strip()
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if (kind == "local" and not arg) or kind == "ray":
        return text
    if kind == "processes" and (not arg or (arg.isdigit() and int(arg) >= 1)):
        return text
    parse_executor(text)  # raises the same message the run would
    return text


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
