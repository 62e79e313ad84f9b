"""The scheduler: queue + policy + bookkeeping, asked for a decision at every sync point.

Not thread-safe by design: one executor thread owns it. Other threads hand it work through
an ``Inbox`` (see ``scheduler.loop``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.calibration import SpeedCalibration
from scheduler.job import Decision, Job, Reject, RunChunk, Wait
from scheduler.policies import Policy, PolicyContext, make_policy
from scheduler.predictor import Predictor
from scheduler.priority import ModelSettings
from scheduler.profile import DeviceCosts, Profile, profile_for
from scheduler.queue import JobQueue
from scheduler.streams import LatencyCriticalStreams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkDone:
    """What happened in one chunk; returned to the loop for metrics."""

    job: Job
    start: int
    end: int
    t0: float
    t1: float
    finished: bool


class Scheduler:
    """Decides, at every sync point, which job runs its next chunk and how long that chunk is.

    ``batch_delay``: how long a batch job of a model may wait for more requests to batch
    with (dynamic batching's queue delay), in seconds.
    ``solo_from_profile``: feed the latency-critical streams' solo estimate with predicted
    execution times instead of measured ones (where jobs run beside other work).
    ``batch_slice_s``: under a preemptive policy, while another batch model is active (a
    job queued, started and unfinished, or arrived within the last ``active_window_s``), a
    batch job's chunk lasts at most this long (predicted; at least one unit), so that batch
    models take turns on the device by device time instead of job by job.
    ``calibrate``: scale each model's profile by how fast its chunks measure against it
    (``scheduler.calibration``); ``profiles`` then holds the scaled profiles the policies
    plan with, ``profiled`` the profiles as given. Off in the simulator, whose device runs
    exactly at the profile's speed.

    Callers: ``submit``/``cancel`` when work arrives or leaves; ``decide`` to get the next
    decision; ``chunk_done``/``chunk_failed`` after the device ran a chunk. Guarantees:
    latency-critical jobs are never preempted and run as one chunk; a queued job whose
    timeout passed is rejected (``Reject``), never run; every submitted job ends exactly once
    (finished, rejected, failed or cancelled).
    """

    def __init__(
        self,
        policy: str,
        costs: DeviceCosts | None = None,
        *,
        streams: LatencyCriticalStreams | None = None,
        batching: Callable[[str], int | None] | None = None,
        solo_from_profile: bool = False,
        batch_delay: Callable[[str], float] | None = None,
        split_batches: bool = True,
        batch_slice_s: float = 0.02,
        active_window_s: float = 1.0,
        calibrate: bool = False,
    ) -> None:
        self.batch_slice_s = batch_slice_s
        self.active_window_s = active_window_s
        self._batch_seen: dict[str, float] = {}
        self._batch_delay = batch_delay or (lambda model: 0.0)
        self._solo_from_profile = solo_from_profile
        self.predictor = Predictor(costs or DeviceCosts())
        self.profiles: dict[str, Profile] = {}
        self.profiled: dict[str, Profile] = {}
        self.calibration = SpeedCalibration() if calibrate else None
        self.settings: dict[str, ModelSettings] = {}
        self.streams = streams or LatencyCriticalStreams()
        self.policy: Policy = make_policy(
            policy, PolicyContext(self.profiles, self.predictor, self.streams, split_batches)
        )
        self.queue = JobQueue(idle_credit_s=batch_slice_s)
        self.current: Job | None = None
        self._batch_limit = batching or (lambda model: None)
        self.preemptions = 0
        self._last_batch_chunk: tuple[float, float] | None = None

    # -- models --------------------------------------------------------------------------

    def set_model(self, name: str, settings: ModelSettings, profile: Profile | None) -> None:
        self.settings[name] = settings
        if profile is None:
            return
        calibration = self.calibration
        if calibration is not None and self.profiled.get(name, profile) != profile:
            calibration.forget(name)  # a new profile: what was measured against the old goes
        old = self.profiled.get(name)
        if old is not None and old is not profile:
            self.predictor.forget(old)
        self.profiled[name] = profile
        factor = calibration.factor(name) if calibration is not None else 1.0
        self._use_profile(name, profile if factor == 1.0 else profile.scaled(factor))

    def _use_profile(self, name: str, profile: Profile) -> None:
        """Plan ``name`` with ``profile`` (its profile as given, or scaled); what the
        predictor cached for a scaled profile it replaces goes."""
        old = self.profiles.get(name)
        if old is not None and old is not profile and old is not self.profiled.get(name):
            self.predictor.forget(old)
        self.profiles[name] = profile

    def remove_model(self, name: str) -> None:
        self.settings.pop(name, None)
        for profile in (self.profiles.pop(name, None), self.profiled.pop(name, None)):
            if profile is not None:
                self.predictor.forget(profile)
        self._batch_seen.pop(name, None)
        if self.calibration is not None:
            self.calibration.forget(name)

    def speed_factor(self, model: str) -> float:
        """How much slower (> 1) or faster (< 1) than its profile ``model`` runs now, as
        the policies plan with it (1.0 without calibration)."""
        return self.calibration.factor(model) if self.calibration is not None else 1.0

    def measured_speed(self, model: str) -> float | None:
        """``speed_factor`` once enough of ``model``'s chunks were measured, else None."""
        c = self.calibration
        if c is None or c.chunks(model) < c.min_samples:
            return None
        return c.factor(model)

    def predicted_solo(self, model: str, batch_size: int) -> float:
        profile = self.profiles.get(model)
        if profile is None:
            return 0.0
        d = self.predictor.flat_durations(profile, batch_size)
        return self.predictor.chunk_time(d, 0, len(d))

    # -- work in and out -----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``. Its ``arrival`` is the time it reached the runtime."""
        if job.latency_critical and job.deadline is not None:
            self.streams.on_arrival(
                job.model,
                job.deadline - job.arrival,
                self.predicted_solo(job.model, job.batch_size),
                job.arrival,
            )
        if not job.latency_critical:
            seen = self._batch_seen.get(job.model, job.arrival)
            self._batch_seen[job.model] = max(job.arrival, seen)
        if job.latency_critical and self._last_batch_chunk is not None:
            # Arrived while a batch chunk held the device: it waited for that sync point.
            t0, t1 = self._last_batch_chunk
            if job.arrival < t1:
                job.preemption_delay += t1 - max(t0, job.arrival)
        self.queue.push(job)

    def cancel(self, job: Job) -> bool:
        """Withdraw ``job``; True if it had not started (it will never run)."""
        job.cancelled = True
        if job.started:
            self.queue.ended(job)
            if job is not self.current:
                self.policy.on_finish(job)  # paused: the policy forgets it now
        return self.queue.remove(job)

    def decide(self, now: float) -> tuple[list[Reject], Decision]:
        rejects = [
            Reject(job, "the request's timeout passed while it was queued")
            for job in self.queue.expired(now)
        ]
        current = self.current
        if current is not None and current.cancelled:
            self._drop(current)
            current = None
        job = self.policy.select(self.queue, current, now)
        if job is None:
            return rejects, Wait()
        hold = self._hold_for_batch(job, now)
        if hold is not None:
            # it waits for more requests; a started job (preempted for it) runs meanwhile
            started = self.policy.select(self.queue, current, now, include_queued=False)
            if started is None:
                return rejects, Wait(until=hold)
            job = started
        preempted = None
        if current is not None and job is not current:
            preempted = current
            current.preemptions += 1
            self.preemptions += 1
            log.debug("preempt %r for %r at %.6f", current, job, now)
        if not job.started:
            job = self._start(job, now)
        self.current = job
        end = self.policy.chunk_end(job, now)
        if not job.latency_critical and self.policy.preemptive:
            end = min(end, self._slice_end(job, now))
        end = max(job.next_unit + 1, min(end, job.total_units))
        return rejects, RunChunk(job, job.next_unit, end, preempted)

    def _slice_end(self, job: Job, now: float) -> int:
        """Where ``job``'s chunk ends at the latest: after ``batch_slice_s`` of predicted
        time while another batch model is active, else at the job's end."""
        profile = profile_for(self.profiles, job)
        if profile is None or not self._other_batch_active(job.model, now):
            return job.total_units
        d = self.predictor.flat_durations(profile, job.batch_size, job.micro_batches)
        return self.predictor.first_chunk_end(d, job.next_unit, self.batch_slice_s)

    def _other_batch_active(self, model: str, now: float) -> bool:
        since = now - self.active_window_s
        if any(m != model and t >= since for m, t in self._batch_seen.items()):
            return True
        return any(m != model for m in self.queue.busy_batch_models())

    def _hold_for_batch(self, job: Job, now: float) -> float | None:
        """Until when a batch job waits for more requests to batch with (its model's
        ``max_queue_delay``), or None to start now."""
        if job.started or job.latency_critical:
            return None
        delay = self._batch_delay(job.model)
        limit = self._limit_for(job)
        if delay <= 0 or limit is None or now >= job.arrival + delay:
            return None
        queued = sum(
            j.batch_size
            for j in self.queue.same_model_queued(job)
            if j.priority is job.priority and j.batch_key == job.batch_key
        )
        return job.arrival + delay if queued < limit else None

    def _limit_for(self, job: Job) -> int | None:
        """The most rows a job merged from ``job`` and others may have: its model's batching
        bound now, and never more than ``job.batch_cap``."""
        limit = self._batch_limit(job.model)
        if job.batch_cap is not None:
            limit = job.batch_cap if limit is None else min(limit, job.batch_cap)
        return limit

    def _start(self, job: Job, now: float) -> Job:
        self.queue.remove(job)
        limit = self._limit_for(job)
        if limit is not None and job.batch_size < limit:
            members = [job]
            total = job.batch_size
            for other in self.queue.same_model_queued(job):
                if (
                    other is job
                    or other.priority is not job.priority
                    or other.batch_key != job.batch_key
                ):
                    continue
                if total + other.batch_size > limit:
                    break
                self.queue.remove(other)
                members.append(other)
                total += other.batch_size
            if len(members) > 1:
                merged = Job(
                    model=job.model,
                    priority=job.priority,
                    batch_size=total,
                    arrival=min(m.arrival for m in members),
                    num_units=job.num_units,
                    deadline=min(
                        (m.deadline for m in members if m.deadline is not None), default=None
                    ),
                    members=members,
                    batch_key=job.batch_key,
                    batch_cap=job.batch_cap,
                )
                merged.preemption_delay = max(m.preemption_delay for m in members)
                for m in members:
                    m.started_at = now
                job = merged
        job.started_at = now
        self.queue.started(job)
        self.policy.on_start(job, now)
        return job

    def chunk_done(
        self, decision: RunChunk, t0: float, t1: float, paused: float = 0.0
    ) -> ChunkDone:
        """Record that the device ran ``decision``'s chunk from ``t0`` to ``t1``; for
        ``paused`` seconds of that it waited for other work (the CPU lane)."""
        job = decision.job
        if self.calibration is not None:
            self._calibrate(decision, t1 - t0 - paused)
        job.next_unit = decision.end
        job.sync_points += 1
        busy = max(0.0, t1 - t0 - paused)  # time paused for the CPU lane is not the job's
        job.device_time += busy
        if job.latency_critical:
            self._last_batch_chunk = None
        else:
            self._last_batch_chunk = (t0, t1)
            self.queue.charge(job.model, busy)
            for waiting in self.queue.waiting_latency_critical():
                waiting.preemption_delay += t1 - max(t0, waiting.arrival)
        finished = job.done
        if finished:
            job.finished_at = t1
            self.current = None
            self.queue.ended(job)
            self.policy.on_finish(job)
            if job.latency_critical:
                service = job.device_time
                if self._solo_from_profile and job.model in self.profiles:
                    service = self.predicted_solo(job.model, job.batch_size)
                self.streams.on_completion(job.model, job.arrival, service)
        return ChunkDone(job, decision.start, decision.end, t0, t1, finished)

    def _calibrate(self, decision: RunChunk, measured: float) -> None:
        job = decision.job
        profile = profile_for(self.profiled, job)
        if profile is None or self.calibration is None:
            return
        d = self.predictor.flat_durations(profile, job.batch_size, job.micro_batches)
        predicted = self.predictor.chunk_time(d, decision.start, decision.end)
        if predicted < self.calibration.min_predicted_s:
            return
        ratio = self.predictor.speed_ratio(d, decision.start, decision.end, measured)
        if self.calibration.observe(job.model, predicted, ratio):
            factor = self.calibration.factor(job.model)
            self._use_profile(job.model, profile.scaled(factor))
            log.info("%s runs at %.2f x its profile's durations", job.model, factor)

    def chunk_failed(self, decision: RunChunk) -> None:
        """The device raised while running ``decision``: the job is dropped."""
        self._drop(decision.job)

    def drop_current(self) -> Job | None:
        """Drop the job in hand (the loop around the scheduler failed); returns it."""
        job = self.current
        if job is not None:
            self._drop(job)
        return job

    def _drop(self, job: Job) -> None:
        job.cancelled = True
        self.current = None
        self.queue.ended(job)
        self.policy.on_finish(job)
