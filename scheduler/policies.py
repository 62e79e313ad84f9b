"""The five scheduling policies. Each one only chooses; the queue and the loop are mechanism.

| name       | order                               | preempts batch | batch chunks            |
|------------|-------------------------------------|----------------|-------------------------|
| `fifo`     | arrival                             | no             | the whole job           |
| `priority` | request priority, then arrival      | no             | the whole job           |
| `layer`    | latency-critical (EDF), fair batch  | yes            | one unit                |
| `fixed:K`  | latency-critical (EDF), fair batch  | yes            | K units                 |
| `deft`     | latency-critical (EDF), fair batch  | yes            | predicted per job       |

Latency-critical jobs always run as one chunk and are never preempted. Under the three
preemptive policies a batch chunk also ends after the scheduler's batch slice while another
batch model is active (``scheduler.core.Scheduler``), so that batch models take turns by
device time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from scheduler.job import Job
from scheduler.predictor import Predictor
from scheduler.priority import InvalidSettings
from scheduler.profile import Profile, profile_for
from scheduler.queue import JobQueue
from scheduler.streams import LatencyCriticalStreams

POLICY_NAMES = ("fifo", "priority", "layer", "fixed:K", "deft")


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may read: model profiles, the predictor, latency-critical streams."""

    profiles: Mapping[str, Profile]
    predictor: Predictor
    streams: LatencyCriticalStreams
    # whether `deft` may split a batch job into chunks and micro-batches: not where
    # latency-critical jobs run beside batch work instead of after its next chunk (the CPU
    # lane, where batch work yields at every unit boundary anyway), since shorter chunks and
    # micro-batches then buy them nothing and cost batch throughput
    split_batches: bool = True


class Policy(Protocol):
    """Chooses the next job and how far it runs before its next sync point."""

    name: str
    # whether a batch job may be set aside at a sync point for other work
    preemptive: bool

    def select(
        self, queue: JobQueue, current: Job | None, now: float, include_queued: bool = True
    ) -> Job | None:
        """The job to run next. ``current`` is the unfinished job that ran the last chunk.
        ``include_queued`` False: only a started job (to keep the device busy while the
        queued job chosen first waits for more requests to batch with)."""
        ...

    def on_start(self, job: Job, now: float) -> None:
        """Called once when ``job`` first gets the device (may set ``micro_batches``)."""
        ...

    def chunk_end(self, job: Job, now: float) -> int:
        """The flat unit index at which ``job``'s next chunk ends (> ``job.next_unit``)."""
        ...

    def on_finish(self, job: Job) -> None: ...


class _NonPreemptive:
    preemptive = False

    def on_start(self, job: Job, now: float) -> None:
        pass

    def chunk_end(self, job: Job, now: float) -> int:
        return job.total_units

    def on_finish(self, job: Job) -> None:
        pass


class FifoPolicy(_NonPreemptive):
    name = "fifo"

    def select(
        self, queue: JobQueue, current: Job | None, now: float, include_queued: bool = True
    ) -> Job | None:
        return current or (queue.first_by_arrival() if include_queued else None)


class PriorityPolicy(_NonPreemptive):
    """Triton-style priority levels: the queue is ordered, running work is never interrupted."""

    name = "priority"

    def select(
        self, queue: JobQueue, current: Job | None, now: float, include_queued: bool = True
    ) -> Job | None:
        return current or (queue.first_by_rank() if include_queued else None)


class _Preemptive:
    """Latency-critical first (earliest deadline); then, among the started batch jobs (the
    one that ran the last chunk and any preempted ones) and the first queued job of each
    batch model, the one whose model has used the least device time. On a tie a started
    job goes on (the one that ran last first, then the most recently preempted), so a
    model's jobs never preempt each other and a switch between batch models happens only
    once the running model has had more device time than another busy one."""

    preemptive = True

    def __init__(self) -> None:
        self.paused: list[Job] = []

    def select(
        self, queue: JobQueue, current: Job | None, now: float, include_queued: bool = True
    ) -> Job | None:
        lc = queue.first_latency_critical() if include_queued else None
        if lc is not None:
            if current is not None and current not in self.paused:
                self.paused.append(current)
            return lc
        self.paused = [job for job in self.paused if not job.cancelled]
        candidates = ([current] if current is not None else []) + self.paused[::-1]
        queued = queue.first_batch_fair() if include_queued else None
        if queued is not None:
            candidates.append(queued)
        if not candidates:
            return None
        best = min(candidates, key=lambda job: queue.vtime(job.model))  # first of ties
        if best in self.paused:
            self.paused.remove(best)
        if current is not None and best is not current and current not in self.paused:
            self.paused.append(current)
        return best

    def on_start(self, job: Job, now: float) -> None:
        pass

    def on_finish(self, job: Job) -> None:
        if job in self.paused:
            self.paused.remove(job)


class FixedPolicy(_Preemptive):
    """A sync point after every ``k`` units of a batch job (``layer`` is ``k = 1``)."""

    def __init__(self, k: int, name: str | None = None) -> None:
        super().__init__()
        if k < 1:
            raise InvalidSettings(f"fixed:K needs K >= 1, got {k}")
        self.k = k
        self.name = name or f"fixed:{k}"

    def chunk_end(self, job: Job, now: float) -> int:
        if job.latency_critical:
            return job.total_units
        return min(job.next_unit + self.k, job.total_units)


class DeftPolicy(_Preemptive):
    """Per job, the plan with the least inference delay under which every active
    latency-critical stream still meets its SLO.

    - No active latency-critical stream, or none that waits for batch chunks (the CPU
      lane, ``split_batches`` off): the whole job, no sync points.
    - A chunk may last ``budget = min(SLO - solo p99 - host time p99)`` over the active
      streams (the host time: what the server reports of requests' time outside the
      device); chunks are packed greedily up to it, which gives the fewest sync points
      under the budget.
    - A unit longer than the budget: the batch is split into the fewest micro-batches whose
      units fit; if no split makes them fit, the finest plan (a sync point after every unit).
    - A batch job with a deadline: the budget is chosen among ``budget * 2**i`` to minimize
      expected SLO violations (its own, plus latency-critical arrivals that would wait longer
      than their slack), ties going to the lower inference delay.
    """

    name = "deft"

    def __init__(self, ctx: PolicyContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._job_budget: dict[int, tuple[tuple[object, ...], float]] = {}

    def _durations(self, job: Job) -> tuple[float, ...] | None:
        profile = profile_for(self.ctx.profiles, job)
        if profile is None:
            return None
        return self.ctx.predictor.flat_durations(profile, job.batch_size, job.micro_batches)

    def on_start(self, job: Job, now: float) -> None:
        if job.latency_critical or not self.ctx.split_batches:
            return
        budget = self.ctx.streams.budget(now)
        profile = profile_for(self.ctx.profiles, job)
        if profile is None or math.isinf(budget) or budget <= 0:
            return
        predictor = self.ctx.predictor
        sync = predictor.costs.sync_s
        if max(predictor.flat_durations(profile, job.batch_size)) + sync <= budget:
            return
        # Units too long for the budget: split the batch, but only if that makes it fit.
        m = 2
        while m <= job.batch_size:
            if max(predictor.flat_durations(profile, job.batch_size, m)) + sync <= budget:
                job.micro_batches = m
                return
            m *= 2

    def budget_for(self, job: Job, now: float) -> float:
        streams = self.ctx.streams
        key = streams.state_key(now)
        cached = self._job_budget.get(job.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        budget = streams.budget(now)
        if job.deadline is not None and not math.isinf(budget):
            budget = self._budget_for_deadline(job, budget, now)
        self._job_budget[job.id] = (key, budget)
        return budget

    def _budget_for_deadline(self, job: Job, base: float, now: float) -> float:
        durations = self._durations(job)
        if durations is None or job.deadline is None:
            return base
        predictor = self.ctx.predictor
        active = self.ctx.streams.active(now)
        lc_load = sum(s.rate(now, 1.0) * s.predicted_solo_s for s in active)
        stretch = 1.0 / max(0.05, 1.0 - min(lc_load, 0.95))
        best: tuple[float, float, float] | None = None
        budget = base
        floor = max(durations) + predictor.costs.sync_s
        for _ in range(24):
            plan = predictor.plan_for_budget(
                durations, budget, job.micro_batches, start=job.next_unit
            )
            pred = predictor.predict(durations, plan, start=job.next_unit)
            own_miss = 1.0 if now + pred.inference_delay * stretch > job.deadline else 0.0
            lc_miss = 0.0
            s = job.next_unit
            chunk_times = []
            for e in plan.chunk_ends:
                chunk_times.append(predictor.chunk_time(durations, s, e))
                s = e
            for st in active:
                slack = st.slack(self.ctx.streams.min_samples)
                rate = st.rate(now, 1.0)
                lc_miss += rate * sum(max(0.0, c - slack) for c in chunk_times)
            score = (own_miss + lc_miss, pred.inference_delay, budget)
            if best is None or score[:2] < best[:2]:
                best = score
            if len(plan.chunk_ends) <= 1:
                break
            budget = max(budget * 2, floor) if budget > 0 else floor
        assert best is not None
        return best[2]

    def chunk_end(self, job: Job, now: float) -> int:
        if job.latency_critical or not self.ctx.split_batches:
            return job.total_units
        budget = self.budget_for(job, now)
        if math.isinf(budget):
            return job.total_units
        durations = self._durations(job)
        if durations is None:
            return job.total_units
        return self.ctx.predictor.first_chunk_end(durations, job.next_unit, budget)

    def on_finish(self, job: Job) -> None:
        super().on_finish(job)
        self._job_budget.pop(job.id, None)


def validate_policy_name(name: str) -> None:
    """Raise ``InvalidSettings`` unless ``name`` is a policy name."""
    if name in ("fifo", "priority", "layer", "deft"):
        return
    if name.startswith("fixed:"):
        k = name.split(":", 1)[1]
        if k.isdigit() and int(k) >= 1:
            return
        raise InvalidSettings(f"fixed:K needs an integer K >= 1, got {name!r}")
    raise InvalidSettings(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


def make_policy(name: str, ctx: PolicyContext) -> Policy:
    """Build a policy from its name (fifo, priority, layer, fixed:K, deft: the names the
    runtime, the simulator and the benchmarks share)."""
    if name == "fifo":
        return FifoPolicy()
    if name == "priority":
        return PriorityPolicy()
    if name == "layer":
        return FixedPolicy(1, name="layer")
    if name == "deft":
        return DeftPolicy(ctx)
    if name.startswith("fixed:"):
        try:
            k = int(name.split(":", 1)[1])
        except ValueError:
            raise InvalidSettings(f"fixed:K needs an integer K, got {name!r}") from None
        return FixedPolicy(k)
    raise InvalidSettings(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")
