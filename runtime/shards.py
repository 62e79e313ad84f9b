"""Row shards: a batch job's rows split across worker threads with one intra-op thread each.

On a CPU, one batch job normally runs on one OpenMP team spanning every core. Each op ends
at the team's barrier, where the threads spin until the slowest one arrives. Beside the
latency-critical lane that is costly: whenever the lane (or the event loop) takes a core,
the team thread on it stops, and the others spin at the next barrier for as long as it is
away, so a latency-critical request costs batch work on every core, not one.

With row shards the job's rows are split into one shard per core, and each shard runs the
chunk's units on its own worker thread with one intra-op thread: no barrier between the
shards inside a chunk. When the lane takes a core, the shard on it waits and the others go
on; a shard that finishes first blocks (not spins), and the OS moves the waiting shard onto
the core it freed. The shards meet once per chunk, at its sync point.

Single-threaded ops on a few rows are also about as fast per row as a team's ops on all of
them, and skip the team's per-op barriers: batch throughput alone does not suffer.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from runtime.threads import limit_intra_op_threads

log = logging.getLogger(__name__)

T = TypeVar("T")

# shards are used only where the largest is at most this much above an even split
_IMBALANCE = 1.25


def shard_sizes(rows: int, workers: int) -> list[int]:
    """How a piece of ``rows`` rows is split across ``workers`` workers: near-equal sizes,
    largest first; ``[rows]`` (no split) where splitting does not pay: fewer than two
    rows or workers, or shards so uneven that the largest takes over 25% longer than an
    even split would (3 rows on 2 workers: the whole team on 3 rows is faster)."""
    if rows < 2 or workers < 2:
        return [rows]
    k = min(workers, rows)
    largest = math.ceil(rows / k)
    if largest * k > _IMBALANCE * rows:
        return [rows]
    base, extra = divmod(rows, k)
    return [base + 1] * extra + [base] * (k - extra)


class ShardPool:
    """``workers`` threads that run a chunk's shards side by side, sharing ``threads``
    intra-op threads: each of ``k`` shards gets ``threads // k`` of them (one each when
    there is a worker per thread). ``setup`` runs once on each worker thread when it starts
    (the batch executor's OS priority). Threads start on first use; ``stop`` ends them."""

    def __init__(
        self,
        workers: int,
        threads: int,
        setup: Callable[[str], None] | None = None,
        name: str = "deft-batch-shard",
    ) -> None:
        if workers < 2:
            raise ValueError(f"a shard pool needs at least 2 workers, got {workers}")
        self.workers = workers
        self.threads = max(1, threads)
        self.name = name
        self._setup = setup
        self._cond = threading.Condition()
        self._tasks: list[list[Callable[[], None]]] = [[] for _ in range(workers)]
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def _ensure_started(self) -> None:
        with self._cond:
            self._stopping = False
            for i in range(self.workers):
                if i < len(self._threads) and self._threads[i].is_alive():
                    continue
                t = threading.Thread(target=self._work, args=(i,), name=f"{self.name}-{i}",
                                     daemon=True)
                if i < len(self._threads):
                    self._threads[i] = t
                else:
                    self._threads.append(t)
                t.start()

    def _work(self, index: int) -> None:
        if self._setup is not None:
            try:
                self._setup(f"{self.name}-{index}")
            except Exception:  # the worker still runs, at the default settings
                log.exception("setting up %s-%d failed", self.name, index)
        while True:
            with self._cond:
                while not self._tasks[index] and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                task = self._tasks[index].pop(0)
            task()

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``tasks[i]`` on worker ``i % workers`` with ``threads // len(tasks)`` intra-op
        threads (at least one); block until all are done and return their results in order.
        The first exception is raised once every task has ended (none outlives the call)."""
        self._ensure_started()
        results: list[Any] = [None] * len(tasks)
        errors: list[BaseException | None] = [None] * len(tasks)
        done = threading.Semaphore(0)
        each = max(1, self.threads // max(1, min(len(tasks), self.workers)))

        def wrap(i: int, fn: Callable[[], T]) -> Callable[[], None]:
            def call() -> None:
                try:
                    limit_intra_op_threads(each)
                    results[i] = fn()
                except BaseException as exc:  # handed to the caller
                    errors[i] = exc
                finally:
                    done.release()
            return call

        with self._cond:
            for i, fn in enumerate(tasks):
                self._tasks[i % self.workers].append(wrap(i, fn))
            self._cond.notify_all()
        for _ in tasks:
            done.acquire()
        for exc in errors:
            if exc is not None:
                raise exc
        return results

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
