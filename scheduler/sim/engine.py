"""The simulated device and a run of a workload on it, on a virtual clock.

The device follows docs/simulator.md's semantics; a chunk's wall time is therefore exactly what the
predictor computes for it, and the simulation is deterministic for a given file and seed.

Lane mode (``cpu_lane``) models the runtime's CPU lane (``runtime/engine.py``): on a CPU
with a preemptive policy, latency-critical jobs run on a thread of their own, one at a time
in the policy's order, from the moment they arrive and at their solo speed, while the batch
executor runs every batch job unit by unit and, before each unit, waits while any
latency-critical job is active (admitted to the lane and not yet answered). It is simulated
in two phases:

1. the latency-critical streams alone (their own arrival times: each stream keeps its index,
   so its random arrivals are those of the full run), which gives their latencies and the
   intervals during which the lane is busy;
2. the batch streams on a device that, before each unit, jumps over the busy interval the
   clock is in (a pause), then runs the unit as a one-unit chunk. The batch scheduler sees
   the latency-critical streams as the runtime's does (one shared record of the streams,
   fed by the lane), so ``deft`` plans batch jobs as it does beside the lane: whole, one
   chunk, never split into micro-batches (latency-critical jobs do not wait for batch
   chunks there).

``fifo`` and ``priority`` never use a lane (as in the runtime), so lane mode is ignored for
them.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Collection
from dataclasses import dataclass, field

from scheduler.clock import FakeClock
from scheduler.core import ChunkDone, Scheduler
from scheduler.job import Job, Reject, RunChunk
from scheduler.loop import ExecutorLoop
from scheduler.priority import ModelSettings, Priority
from scheduler.sim.workload import Stream, Workload
from scheduler.streams import LatencyCriticalStreams

NON_PREEMPTIVE = ("fifo", "priority")


def lane_applies(policy: str, cpu_lane: bool) -> bool:
    """Whether a run of ``policy`` uses the CPU lane (``EngineOptions.lane_enabled``'s rule:
    ``fifo`` and ``priority`` never do)."""
    return cpu_lane and policy not in NON_PREEMPTIVE


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
                self.scheduler.profiled[job.model], job.batch_size, job.micro_batches
            )
            t = predictor.chunk_time(durations, chunk.start, chunk.end)
            self._times[key] = t
        self.launches += chunk.end - chunk.start
        self.syncs += 1
        self.clock.advance(t)


class LaneDevice(SimDevice):
    """The batch side of the CPU lane: each chunk runs unit by unit, every unit as a
    one-unit chunk (in the runtime every unit boundary is a sync point beside the lane), and
    before each unit the batch work pauses while the lane is busy.

    ``busy``: the lane's busy intervals ``[start, end)``, sorted and disjoint.
    """

    def __init__(
        self, scheduler: Scheduler, clock: FakeClock, busy: list[tuple[float, float]]
    ) -> None:
        super().__init__(scheduler, clock)
        self.busy = busy
        self._next = 0
        self.pauses: list[tuple[float, float]] = []

    def _pause_if_busy(self) -> None:
        now = self.clock.now()
        busy = self.busy
        k = self._next
        while k < len(busy) and busy[k][1] <= now:
            k += 1
        self._next = k
        if k < len(busy) and busy[k][0] <= now:
            end = busy[k][1]
            self.pauses.append((now, end))
            self.clock.set(end)

    def run_chunk(self, chunk: RunChunk) -> None:
        job = chunk.job
        predictor = self.scheduler.predictor
        durations = predictor.flat_durations(
            self.scheduler.profiled[job.model], job.batch_size, job.micro_batches
        )
        for i in range(chunk.start, chunk.end):
            self._pause_if_busy()
            key = (job.batch_size, job.micro_batches, i, i + 1, job.model)
            t = self._times.get(key)
            if t is None:
                t = self._times[key] = predictor.chunk_time(durations, i, i + 1)
            self.launches += 1
            self.syncs += 1
            self.clock.advance(t)


@dataclass(frozen=True)
class _StreamEvent:
    """One update of the latency-critical streams' record, as the lane made it."""

    time: float
    arrival: bool  # on_arrival (else on_completion)
    model: str
    at: float  # on_arrival's ``now`` / on_completion's ``arrival``
    seconds: float  # on_arrival's ``predicted_solo_s`` / on_completion's ``service_s``
    slo_s: float = 0.0


class _RecordingStreams(LatencyCriticalStreams):
    """The lane's record of the latency-critical streams; remembers every update and when
    (virtual time) it was made, so that the batch side can see the same record."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.events: list[_StreamEvent] = []

    def on_arrival(self, model: str, slo_s: float, predicted_solo_s: float, now: float) -> None:
        self.events.append(
            _StreamEvent(self.clock.now(), True, model, now, predicted_solo_s, slo_s)
        )
        super().on_arrival(model, slo_s, predicted_solo_s, now)

    def on_completion(self, model: str, arrival: float, service_s: float) -> None:
        self.events.append(_StreamEvent(self.clock.now(), False, model, arrival, service_s))
        super().on_completion(model, arrival, service_s)


@dataclass
class StreamRecord:
    stream: Stream
    latencies: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    preemption_delays: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    arrived: int = 0
    rejected: int = 0
    failed: int = 0


class SimRun:
    """Arrivals (inbox) and bookkeeping (listener) for one simulated run.

    ``only``: the indices of the streams that run (default: all). The others send nothing
    and keep empty records; every stream draws its arrivals from the random stream of its
    own index, so a stream's arrival times do not depend on which others run.
    """

    def __init__(
        self,
        workload: Workload,
        scheduler: Scheduler,
        clock: FakeClock,
        only: Collection[int] | None = None,
    ) -> None:
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
            if only is not None and i not in only:
                continue
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
            self.records[i].arrivals.append(t)
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


class _LaneRun(SimRun):
    """The latency-critical streams on the lane: also records when the lane is busy, from
    a job's arrival (it is admitted at once) until it is answered."""

    def __init__(
        self, workload: Workload, scheduler: Scheduler, clock: FakeClock, only: Collection[int]
    ) -> None:
        super().__init__(workload, scheduler, clock, only)
        self.busy: list[tuple[float, float]] = []

    def on_complete(self, job: Job, now: float) -> None:
        self.busy.append((job.arrival, now))
        super().on_complete(job, now)

    def on_reject(self, reject: Reject, now: float) -> None:
        self.busy.append((reject.job.arrival, now))
        super().on_reject(reject, now)


class _BatchRun(SimRun):
    """The batch streams beside the lane: before each decision, the batch scheduler's record
    of the latency-critical streams catches up with the lane's updates made so far."""

    def __init__(
        self,
        workload: Workload,
        scheduler: Scheduler,
        clock: FakeClock,
        only: Collection[int],
        events: list[_StreamEvent],
    ) -> None:
        super().__init__(workload, scheduler, clock, only)
        self._events = sorted(events, key=lambda e: e.time)  # stable: same-time order kept
        self._next_event = 0

    def drain(self, scheduler: Scheduler, now: float) -> None:
        events = self._events
        streams = scheduler.streams
        while self._next_event < len(events) and events[self._next_event].time <= now:
            e = events[self._next_event]
            self._next_event += 1
            if e.arrival:
                streams.on_arrival(e.model, e.slo_s, e.seconds, e.at)
            else:
                streams.on_completion(e.model, e.at, e.seconds)
        super().drain(scheduler, now)


def merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``intervals`` sorted, with overlapping (and touching) ones merged."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


@dataclass
class RunResult:
    """One simulated run. In lane mode (``cpu_lane``) ``preemptions`` counts the batch
    pauses, ``pauses`` lists them (``[start, end)``) and ``lane_busy`` holds the lane's
    merged busy intervals."""

    workload: Workload
    policy: str
    records: list[StreamRecord]
    launches: int
    syncs: int
    preemptions: int
    sim_end_s: float
    cpu_lane: bool = False
    lane_busy: list[tuple[float, float]] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(r.arrived - len(r.latencies) - r.rejected - r.failed for r in self.records)


def _scheduler(
    workload: Workload,
    policy: str,
    streams: LatencyCriticalStreams | None = None,
    solo_from_profile: bool = False,
    split_batches: bool = True,
) -> Scheduler:
    scheduler = Scheduler(
        policy, workload.costs, streams=streams, solo_from_profile=solo_from_profile,
        split_batches=split_batches, batch_slice_s=workload.batch_slice_s,
    )
    for name, profile in workload.models.items():
        scheduler.profiled[name] = scheduler.profiles[name] = profile
    for s in workload.streams:
        scheduler.settings.setdefault(s.model, ModelSettings(s.priority, s.slo_ms))
    return scheduler


def simulate(workload: Workload, policy: str, cpu_lane: bool | None = None) -> RunResult:
    """Run ``workload`` under ``policy`` to completion (every arrival answered).

    ``cpu_lane``: model the runtime's CPU lane (see the module docstring); None: as the
    workload's ``device.cpu_lane`` says. Ignored for ``fifo`` and ``priority``.
    """
    lane = workload.cpu_lane if cpu_lane is None else cpu_lane
    if lane_applies(policy, lane):
        return _simulate_lane(workload, policy)
    clock = FakeClock()
    scheduler = _scheduler(workload, policy)
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


def _simulate_lane(workload: Workload, policy: str) -> RunResult:
    lc = {i for i, s in enumerate(workload.streams) if s.priority is Priority.LATENCY_CRITICAL}
    batch = set(range(len(workload.streams))) - lc
    # Phase 1: the lane alone. Like the runtime's lane scheduler, its streams' solo samples
    # come from the profile (beside batch work, measured times would not be solo times).
    lane_clock = FakeClock()
    streams = _RecordingStreams(lane_clock)
    lane_scheduler = _scheduler(workload, policy, streams, solo_from_profile=True)
    lane_run = _LaneRun(workload, lane_scheduler, lane_clock, lc)
    lane_device = SimDevice(lane_scheduler, lane_clock)
    ExecutorLoop(lane_scheduler, lane_device, lane_run, lane_run, lane_clock).run()
    busy = merge_intervals(lane_run.busy)
    # Phase 2: the batch streams, pausing at unit boundaries while the lane is busy. As in
    # the runtime, batch jobs are not split into micro-batches beside the lane.
    clock = FakeClock()
    scheduler = _scheduler(workload, policy, split_batches=False)
    run = _BatchRun(workload, scheduler, clock, batch, streams.events)
    device = LaneDevice(scheduler, clock, busy)
    ExecutorLoop(scheduler, device, run, run, clock).run()
    records = [
        (lane_run.records if i in lc else run.records)[i] for i in range(len(workload.streams))
    ]
    for i in lc:
        # nothing on the lane waits for batch work
        records[i].preemption_delays = [0.0] * len(records[i].preemption_delays)
    return RunResult(
        workload,
        policy,
        records,
        lane_device.launches + device.launches,
        lane_device.syncs + device.syncs,
        len(device.pauses),
        max(lane_clock.now(), clock.now()),
        cpu_lane=True,
        lane_busy=busy,
        pauses=device.pauses,
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]
