"""Factories for scheduler tests: jobs and schedulers with literal times."""

from __future__ import annotations

from scheduler.core import Scheduler
from scheduler.job import Job, RunChunk, Wait
from scheduler.priority import ModelSettings, Priority
from scheduler.profile import DeviceCosts, Profile

LC = Priority.LATENCY_CRITICAL
BATCH = Priority.BATCH


def make_job(
    model: str = "b",
    priority: Priority = BATCH,
    arrival: float = 0.0,
    units: int = 4,
    batch_size: int = 1,
    slo: float | None = None,
    timeout: float | None = None,
) -> Job:
    if priority is LC and slo is None:
        slo = 1.0
    return Job(
        model=model,
        priority=priority,
        batch_size=batch_size,
        arrival=arrival,
        num_units=units,
        deadline=arrival + slo if slo is not None else None,
        timeout_at=arrival + timeout if timeout is not None else None,
    )


def make_scheduler(
    policy: str,
    profiles: dict[str, list[float]] | None = None,
    launch: float = 0.0,
    sync: float = 0.0,
    **kw: object,
) -> Scheduler:
    s = Scheduler(policy, DeviceCosts(launch, sync), **kw)  # type: ignore[arg-type]
    for name, durations in (profiles or {}).items():
        s.set_model(name, ModelSettings(), Profile({1: tuple(durations)}))
    return s


def run_to_completion(s: Scheduler, start: float = 0.0, chunk_time: float = 1.0) -> list[tuple]:
    """Drive ``s`` with every chunk taking ``chunk_time``; returns (job id, start, end)."""
    t = start
    out = []
    while True:
        _, d = s.decide(t)
        if isinstance(d, Wait):
            return out
        assert isinstance(d, RunChunk)
        s.chunk_done(d, t, t + chunk_time)
        t += chunk_time
        out.append((d.job.id, d.start, d.end))
