"""The executor loop: the one mechanism that both the simulated device and the torch
executor drive. At every sync point it applies new work, asks the scheduler for a decision,
and runs that decision on the device."""

from __future__ import annotations

import logging
from typing import Protocol

from scheduler.clock import Clock
from scheduler.core import ChunkDone, Scheduler
from scheduler.job import Job, Reject, RunChunk

log = logging.getLogger(__name__)


class Device(Protocol):
    """Runs chunks. ``run_chunk`` returns once the chunk has reached its sync point, with
    how many seconds of it were spent waiting for other work rather than running the chunk
    (None: none)."""

    def run_chunk(self, chunk: RunChunk) -> float | None: ...


class Inbox(Protocol):
    """Where new work and cancellations come from."""

    def drain(self, scheduler: Scheduler, now: float) -> None:
        """Submit to / cancel in ``scheduler`` everything that arrived up to ``now``."""
        ...

    def wait(self, until: float | None) -> bool:
        """Block until work may have arrived or clock time ``until``; False: stop the loop."""
        ...


class Listener(Protocol):
    """Told what happened to every job; it answers the requests behind them."""

    def on_chunk(self, done: ChunkDone, chunk: RunChunk) -> None: ...

    def on_complete(self, job: Job, now: float) -> None: ...

    def on_reject(self, reject: Reject, now: float) -> None: ...

    def on_fail(self, job: Job, error: BaseException, now: float) -> None: ...


class ExecutorLoop:
    """Runs until the inbox says stop. One instance per device; never on an event loop."""

    def __init__(
        self,
        scheduler: Scheduler,
        device: Device,
        inbox: Inbox,
        listener: Listener,
        clock: Clock,
    ) -> None:
        self.scheduler = scheduler
        self.device = device
        self.inbox = inbox
        self.listener = listener
        self.clock = clock

    def run(self) -> None:
        while self.step():
            pass

    def step(self) -> bool:
        """One decision and (if any) one chunk. False once the loop should stop."""
        scheduler = self.scheduler
        now = self.clock.now()
        self.inbox.drain(scheduler, now)
        rejects, decision = scheduler.decide(now)
        for reject in rejects:
            self.listener.on_reject(reject, now)
        if not isinstance(decision, RunChunk):
            return self.inbox.wait(decision.until)
        t0 = self.clock.now()
        try:
            paused = self.device.run_chunk(decision)
        except Exception as exc:  # the model failed: only this job fails
            log.warning("job %r failed: %s", decision.job, exc)
            scheduler.chunk_failed(decision)
            self.listener.on_fail(decision.job, exc, self.clock.now())
            return True
        t1 = self.clock.now()
        done = scheduler.chunk_done(decision, t0, t1, paused or 0.0)
        self.listener.on_chunk(done, decision)
        if done.finished:
            self.listener.on_complete(decision.job, t1)
        return True
