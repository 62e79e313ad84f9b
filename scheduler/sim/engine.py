"""The simulated device and a run of a workload on it, on a virtual clock.

The device follows DESIGN.md's semantics; a chunk's wall time is therefore exactly what the
predictor computes for it, and the simulation is deterministic for a given file and seed.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from scheduler.clock import FakeClock
from scheduler.core import ChunkDone, Scheduler
from scheduler.job import Job, Reject, RunChunk
from scheduler.loop import ExecutorLoop
from scheduler.priority import ModelSettings
from scheduler.sim.workload import Stream, Workload


class SimDevice:
    """Runs a chunk by advancing the virtual clock by the chunk's wall time."""

    def __init__(self, scheduler: Scheduler, clock: FakeClock) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.launches = 0
        self.syncs = 0
        self._times: dict[tuple[int, int, int, int, str], float] = {}

    def run_chunk(self, chunk: RunChunk) -> None:
        job = chunk.job
        key = (job.batch_size, job.micro_batches, chunk.start, chunk.end, job.model)
        t = self._times.get(key)
        if t is None:
            predictor = self.scheduler.predictor
            durations = predictor.flat_durations(
                self.scheduler.profiles[job.model], job.batch_size, job.micro_batches
            )
            t = predictor.chunk_time(durations, chunk.start, chunk.end)
            self._times[key] = t
        self.launches += chunk.end - chunk.start
        self.syncs += 1
        self.clock.advance(t)


@dataclass
class StreamRecord:
    stream: Stream
    latencies: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    preemption_delays: list[float] = field(default_factory=list)
    arrived: int = 0
    rejected: int = 0
    failed: int = 0


class SimRun:
    """Arrivals (inbox) and bookkeeping (listener) for one simulated run."""

    def __init__(self, workload: Workload, scheduler: Scheduler, clock: FakeClock) -> None:
        self.workload = workload
        self.scheduler = scheduler
        self.clock = clock
        self.records = [StreamRecord(s) for s in workload.streams]
        self._pending: list[tuple[float, int, int]] = []  # (time, seq, stream index)
        self._seq = 0
        self._stream_of: dict[int, int] = {}
        self._rngs: list[random.Random] = []
        for i, stream in enumerate(workload.streams):
            rng = random.Random(workload.seed * 1_000_003 + i)
            self._rngs.append(rng)
            a = stream.arrival
            if a.type == "closed":
                for _ in range(a.clients):
                    self._push(0.0, i)
            elif a.type == "periodic":
                self._push(0.0, i)
            elif a.type == "poisson":
                self._push(rng.expovariate(a.rate_per_s), i)
            else:
                for off in a.offsets_ms:
                    if off / 1000.0 < workload.duration_s:
                        self._push(off / 1000.0, i)

    def _push(self, t: float, index: int) -> None:
        if t < self.workload.duration_s:
            self._seq += 1
            heapq.heappush(self._pending, (t, self._seq, index))

    # -- Inbox ---------------------------------------------------------------------------

    def drain(self, scheduler: Scheduler, now: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now:
            t, _, i = heapq.heappop(pending)
            stream = self.workload.streams[i]
            a = stream.arrival
            if a.type == "periodic":
                self._push(t + 1.0 / a.rate_per_s, i)
            elif a.type == "poisson":
                self._push(t + self._rngs[i].expovariate(a.rate_per_s), i)
            job = Job(
                model=stream.model,
                priority=stream.priority,
                batch_size=stream.batch_size,
                arrival=t,
                num_units=scheduler.profiles[stream.model].num_units,
                deadline=t + stream.slo_ms / 1000.0 if stream.slo_ms else None,
                timeout_at=t + stream.timeout_ms / 1000.0 if stream.timeout_ms else None,
            )
            self._stream_of[job.id] = i
            self.records[i].arrived += 1
            scheduler.submit(job)

    def wait(self, until: float | None) -> bool:
        if not self._pending:
            return False
        nxt = self._pending[0][0]
        if until is not None:
            nxt = min(nxt, until)
        if nxt > self.clock.now():
            self.clock.set(nxt)
        return True

    # -- Listener ------------------------------------------------------------------------

    def on_chunk(self, done: ChunkDone, chunk: RunChunk) -> None:
        pass

    def on_complete(self, job: Job, now: float) -> None:
        i = self._stream_of.pop(job.id)
        rec = self.records[i]
        rec.latencies.append(now - job.arrival)
        rec.inference.append(now - (job.started_at or now))
        if job.latency_critical:
            rec.preemption_delays.append(job.preemption_delay)
        if rec.stream.arrival.type == "closed":
            self._push(now, i)

    def on_reject(self, reject: Reject, now: float) -> None:
        i = self._stream_of.pop(reject.job.id)
        self.records[i].rejected += 1
        if self.records[i].stream.arrival.type == "closed":
            self._push(now, i)

    def on_fail(self, job: Job, error: BaseException, now: float) -> None:
        i = self._stream_of.pop(job.id)
        self.records[i].failed += 1


@dataclass
class RunResult:
    workload: Workload
    policy: str
    records: list[StreamRecord]
    launches: int
    syncs: int
    preemptions: int
    sim_end_s: float

    @property
    def lost(self) -> int:
        return sum(r.arrived - len(r.latencies) - r.rejected - r.failed for r in self.records)


def simulate(workload: Workload, policy: str) -> RunResult:
    """Run ``workload`` under ``policy`` to completion (every arrival answered)."""
    clock = FakeClock()
    scheduler = Scheduler(policy, workload.costs)
    for name, profile in workload.models.items():
        scheduler.profiles[name] = profile
    for s in workload.streams:
        scheduler.settings.setdefault(s.model, ModelSettings(s.priority, s.slo_ms))
    run = SimRun(workload, scheduler, clock)
    device = SimDevice(scheduler, clock)
    ExecutorLoop(scheduler, device, run, run, clock).run()
    return RunResult(
        workload,
        policy,
        run.records,
        device.launches,
        device.syncs,
        scheduler.preemptions,
        clock.now(),
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]
