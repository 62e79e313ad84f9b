"""The job queue: every queued (not yet started) job, indexed for each policy's order.

Mechanism only: policies decide which job runs; the queue answers "who is first" in the
orders they need (arrival, request priority, earliest deadline, fair share among batch
models) and forgets jobs lazily once they start, are rejected or are cancelled.

Fair share: each batch model has a virtual time, the device time it has used; the model
with the least goes first. A model counts as busy while it has jobs queued or a batch job
started and not finished (running or preempted); one that was idle does not bank the
device time it did not ask for: it comes back at most ``idle_credit_s`` behind the least
virtual time among the busy models. That credit (the scheduler's batch slice) keeps a
model whose client sends its next request right after each answer from losing its turn
to the round trip.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from typing import Any

from scheduler.job import Job

_INF = math.inf


def _deadline(job: Job) -> float:
    return job.deadline if job.deadline is not None else _INF


class JobQueue:
    """Queued jobs. Not thread-safe: only the executor thread touches it."""

    def __init__(self, idle_credit_s: float = 0.0) -> None:
        self.idle_credit_s = idle_credit_s
        self._queued: set[int] = set()
        self._by_arrival: list[tuple[float, int, Job]] = []
        self._by_rank: list[tuple[int, float, int, Job]] = []
        self._lc: list[tuple[float, float, int, Job]] = []
        self._batch: dict[str, list[tuple[float, float, int, Job]]] = defaultdict(list)
        self._batch_count: dict[str, int] = defaultdict(int)
        self._timeouts: list[tuple[float, int, Job]] = []
        self._vtime: dict[str, float] = defaultdict(float)
        self._vclock = 0.0
        self._unfinished: dict[int, str] = {}  # started batch jobs not yet ended: id -> model
        self.count_by_model: dict[str, int] = defaultdict(int)
        self._forgotten = 0

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, job: Job) -> bool:
        return job.id in self._queued

    def push(self, job: Job) -> None:
        self._queued.add(job.id)
        self.count_by_model[job.model] += 1
        heapq.heappush(self._by_arrival, (job.arrival, job.id, job))
        heapq.heappush(self._by_rank, (job.priority.rank, job.arrival, job.id, job))
        if job.latency_critical:
            heapq.heappush(self._lc, (_deadline(job), job.arrival, job.id, job))
        else:
            if not self._busy(job.model):
                # A model that was idle does not bank device time it did not ask for.
                self._vtime[job.model] = max(
                    self._vtime[job.model], self._vclock - self.idle_credit_s
                )
            self._batch_count[job.model] += 1
            heapq.heappush(self._batch[job.model], (_deadline(job), job.arrival, job.id, job))
        if job.timeout_at is not None:
            heapq.heappush(self._timeouts, (job.timeout_at, job.id, job))

    def remove(self, job: Job) -> bool:
        """Forget ``job`` (started, rejected or cancelled). False if it was not queued."""
        if job.id not in self._queued:
            return False
        self._queued.discard(job.id)
        self.count_by_model[job.model] -= 1
        if not job.latency_critical:
            self._batch_count[job.model] -= 1
        self._forgotten += 1
        if self._forgotten > 64 and self._forgotten > 2 * len(self._queued):
            self._compact()
        return True

    def _compact(self) -> None:
        """Drop forgotten jobs from every index (the policy in use reads only some of them)."""
        heaps: list[list[Any]] = [
            self._by_arrival,
            self._by_rank,
            self._lc,
            self._timeouts,
            *self._batch.values(),
        ]
        for heap in heaps:
            heap[:] = [e for e in heap if e[-1].id in self._queued]
            heapq.heapify(heap)
        self._forgotten = 0

    def _head(self, heap: list) -> Job | None:  # type: ignore[type-arg]
        while heap:
            job: Job = heap[0][-1]
            if job.id in self._queued:
                return job
            heapq.heappop(heap)
        return None

    def first_by_arrival(self) -> Job | None:
        return self._head(self._by_arrival)

    def first_by_rank(self) -> Job | None:
        return self._head(self._by_rank)

    def first_latency_critical(self) -> Job | None:
        """The queued latency-critical job with the earliest deadline."""
        return self._head(self._lc)

    def waiting_latency_critical(self) -> list[Job]:
        return [entry[-1] for entry in self._lc if entry[-1].id in self._queued]

    def first_batch_fair(self) -> Job | None:
        """The earliest-deadline job of the batch model that has used the least device time."""
        best: Job | None = None
        best_v = _INF
        for model, count in self._batch_count.items():
            if count <= 0:
                continue
            v = self._vtime[model]
            if v < best_v:
                head = self._head(self._batch[model])
                if head is not None:
                    best, best_v = head, v
        return best

    def same_model_queued(self, job: Job) -> list[Job]:
        """Queued jobs of ``job``'s model and class, in their run order (for batching)."""
        heap = self._lc if job.latency_critical else self._batch[job.model]
        found = [e for e in heap if e[-1].id in self._queued and e[-1].model == job.model]
        found.sort(key=lambda e: e[:3])
        return [e[-1] for e in found]

    def started(self, job: Job) -> None:
        """``job`` (a batch job) got the device: its model stays busy until ``ended``."""
        if not job.latency_critical:
            self._unfinished[job.id] = job.model

    def ended(self, job: Job) -> None:
        """A started job finished, failed or was cancelled (idempotent)."""
        self._unfinished.pop(job.id, None)

    def _busy(self, model: str) -> bool:
        return self._batch_count[model] > 0 or model in self._unfinished.values()

    def busy_batch_models(self) -> set[str]:
        """Batch models with jobs queued or started and not finished."""
        busy = {m for m, c in self._batch_count.items() if c > 0}
        busy.update(self._unfinished.values())
        return busy

    def vtime(self, model: str) -> float:
        """The device time (s) ``model`` has used, as fair sharing counts it."""
        return self._vtime[model]

    def charge(self, model: str, device_seconds: float) -> None:
        """Account device time to a batch model for fair sharing."""
        self._vtime[model] += device_seconds
        self._vclock = max(
            self._vclock,
            min((self._vtime[m] for m in self.busy_batch_models()), default=self._vtime[model]),
        )

    def expired(self, now: float) -> list[Job]:
        """Queued jobs whose queueing timeout has passed, removed from the queue."""
        out: list[Job] = []
        heap = self._timeouts
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if self.remove(job):
                out.append(job)
        return out
