"""Jobs, plans and the decisions the scheduler hands to an executor."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from scheduler.priority import Priority

_ids = itertools.count(1)


def next_job_id() -> int:
    return next(_ids)


@dataclass(frozen=True)
class Plan:
    """How a job's work is cut into chunks; a sync point follows every chunk.

    The job's batch is run as ``micro_batches`` micro-batches one after another; its work is
    then a flat sequence of ``micro_batches * units`` unit runs, and ``chunk_ends`` are the
    (exclusive) flat indices after which a sync point is placed. The last end is the total.
    """

    micro_batches: int
    chunk_ends: tuple[int, ...]

    @property
    def total_units(self) -> int:
        return self.chunk_ends[-1]


@dataclass(eq=False)
class Job:
    """One unit of schedulable work: a request, or several requests batched together.

    Progress is ``next_unit``, a flat index over ``micro_batches * num_units`` unit runs
    (see ``Plan``). ``payload`` is opaque to the scheduler (the runtime keeps tensors there);
    ``members`` are the jobs merged into this one by dynamic batching (only jobs with equal
    ``batch_key`` are merged), into a job of at most ``batch_cap`` rows where one is set
    (the bound of the model version the job was admitted for, which may be lower than the
    version serving now); ``device_state`` is where a device keeps a job's intermediate
    results between chunks.
    """

    model: str
    priority: Priority
    batch_size: int
    arrival: float
    num_units: int
    deadline: float | None = None
    timeout_at: float | None = None
    payload: Any = None
    batch_key: object = None
    batch_cap: int | None = None
    id: int = field(default_factory=next_job_id)
    members: list[Job] = field(default_factory=list)
    # progress, owned by the scheduler
    micro_batches: int = 1
    next_unit: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    device_time: float = 0.0
    preemptions: int = 0
    preemption_delay: float = 0.0
    cancelled: bool = False
    sync_points: int = 0
    device_state: Any = None

    @property
    def total_units(self) -> int:
        return self.micro_batches * self.num_units

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def done(self) -> bool:
        return self.next_unit >= self.total_units

    @property
    def latency_critical(self) -> bool:
        return self.priority is Priority.LATENCY_CRITICAL

    def micro_batch_sizes(self) -> list[int]:
        """Sizes of the micro-batches, largest first, summing to ``batch_size``."""
        m = self.micro_batches
        base, extra = divmod(self.batch_size, m)
        return [base + (1 if i < extra else 0) for i in range(m)]

    def __repr__(self) -> str:
        return (
            f"Job({self.id}, {self.model}, {self.priority.value}, bs={self.batch_size}, "
            f"{self.next_unit}/{self.total_units})"
        )


@dataclass(frozen=True)
class RunChunk:
    """Run flat units ``[start, end)`` of ``job``, then a sync point.

    ``preempted`` is the job that held the device at the last sync point and yields now.
    """

    job: Job
    start: int
    end: int
    preempted: Job | None = None


@dataclass(frozen=True)
class Reject:
    """``job`` is answered with an error and never run (its queueing timeout passed)."""

    job: Job
    reason: str


@dataclass(frozen=True)
class Wait:
    """Nothing to run: wait for an arrival, or until ``until`` (clock time) at the latest."""

    until: float | None = None


Decision = RunChunk | Wait
