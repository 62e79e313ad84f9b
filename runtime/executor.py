"""The torch side of the executor loop: one thread per device runs the scheduler's
decisions on real models and answers the requests behind each job.

Thread model: the event loop thread only submits and cancels through a ``ThreadInbox`` and
awaits futures; the executor thread owns the scheduler and runs torch; answers cross back with
``loop.call_soon_threadsafe``. Torch never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from runtime.errors import InferenceFailed, ModelNotReady, RequestTimeout
from runtime.metrics import Metrics
from runtime.shards import ShardPool, shard_sizes
from runtime.threads import limit_intra_op_threads, lower_thread_priority
from scheduler.clock import Clock
from scheduler.core import ChunkDone, Scheduler
from scheduler.job import Job, Reject, RunChunk
from scheduler.loop import ExecutorLoop

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Pending:
    """One admitted request waiting for its answer (kept in ``Job.payload``)."""

    model: str
    priority_label: str
    inputs: dict[str, np.ndarray]
    future: asyncio.Future[dict[str, np.ndarray]] | None  # None once answered
    loop: asyncio.AbstractEventLoop
    admitted_at: float
    slo_s: float | None = None
    on_done: Callable[[], None] | None = field(default=None, repr=False)
    completed_at: float | None = None  # when its job ended on the executor (clock time)
    # the model version it was admitted for (runtime.engine.ServedModel): its job runs on
    # that one even when a reload brought a newer one meanwhile
    served: Any = field(default=None, repr=False)

    def resolve(self, result: dict[str, np.ndarray] | BaseException | None) -> None:
        """Answer from any thread; ``None`` withdraws the request (nobody waits for it).

        Only the first answer counts. The request lets go of its inputs and its answer
        here: a finished job may outlive its request (the scheduler's queue forgets jobs
        lazily), and it must not keep their tensors alive."""
        future = self.future
        if future is None:
            return
        self.future = None
        self.inputs = {}
        self.served = None

        def _set() -> None:
            if self.on_done is not None:
                self.on_done()
                self.on_done = None
            if future.done():
                return
            if result is None:
                future.cancel()
            elif isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        # a closed event loop raises RuntimeError: nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_set)


class ThreadInbox:
    """Hands work from other threads to the executor thread (scheduler ``Inbox``)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._submitted: list[Job] = []
        self._cancelled: list[Job] = []
        self._calls: list[Callable[[Scheduler], None]] = []
        self._stopping = False
        self.on_cancelled: Callable[[Job], None] = lambda job: None

    def submit(self, job: Job) -> None:
        with self._cond:
            self._submitted.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        with self._cond:
            self._cancelled.append(job)
            self._cond.notify()

    def call(self, fn: Callable[[Scheduler], None]) -> None:
        """Run ``fn(scheduler)`` on the executor thread at its next sync point."""
        with self._cond:
            self._calls.append(fn)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._stopping = False

    def drain(self, scheduler: Scheduler, now: float) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
            submitted, self._submitted = self._submitted, []
            cancelled, self._cancelled = self._cancelled, []
        for fn in calls:
            fn(scheduler)
        for job in submitted:
            scheduler.submit(job)
        for job in cancelled:
            # a job that already started (running, or paused for latency-critical work after
            # some of its units) is dropped at this sync point and never runs again; nobody
            # waits for its answer any more. A request merged into a running job (it never
            # advances itself) is answered with that job, which still needs its inputs.
            running = scheduler.current is job or 0 < job.next_unit < job.total_units
            unanswered = job.payload is None or getattr(job.payload, "future", None) is not None
            if scheduler.cancel(job) or (running and unanswered):
                self.on_cancelled(job)

    def wait(self, until: float | None) -> bool:
        with self._cond:
            if self._stopping:
                return False
            if not (self._submitted or self._cancelled or self._calls):
                timeout = 0.5
                if until is not None and self._clock is not None:
                    timeout = min(timeout, max(0.0, until - self._clock.now()))
                self._cond.wait(timeout=timeout)
            return not self._stopping


class BatchGate:
    """Lets latency-critical work run beside batch work on a CPU (the CPU lane).

    The engine ``enter``s when it hands a latency-critical job to its own thread and
    ``leave``s when that job is answered; the batch device calls ``pause_if_closed`` between
    units, so batch work yields at its next sync point and the OS gives the cores to the
    latency-critical thread in the meantime.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._active = 0
        self._closed_at = 0.0

    def enter(self) -> None:
        with self._cond:
            if self._active == 0:
                self._closed_at = self.clock.now()
            self._active += 1

    def leave(self, n: int = 1) -> None:
        with self._cond:
            self._active = max(0, self._active - n)
            if self._active == 0:
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._active > 0

    def pause_if_closed(self) -> tuple[float, float] | None:
        """Block while latency-critical work is active. Returns how long the batch work took
        to yield (since the gate closed) and how long it then waited, or None if it did not
        have to wait."""
        if self._active == 0:
            return None
        with self._cond:
            if self._active == 0:
                return None
            start = self.clock.now()
            delay = start - self._closed_at
            while self._active > 0:
                self._cond.wait(0.5)
            return delay, self.clock.now() - start


class GateListener:
    """Wraps a listener so that the gate opens once a latency-critical job is answered."""

    def __init__(self, inner: Any, gate: BatchGate) -> None:
        self.inner = inner
        self.gate = gate

    def on_chunk(self, done: ChunkDone, chunk: RunChunk) -> None:
        self.inner.on_chunk(done, chunk)

    def on_complete(self, job: Job, now: float) -> None:
        try:
            self.inner.on_complete(job, now)
        finally:
            self.gate.leave(len(job.members) or 1)

    def on_reject(self, reject: Reject, now: float) -> None:
        try:
            self.inner.on_reject(reject, now)
        finally:
            self.gate.leave(len(reject.job.members) or 1)

    def on_fail(self, job: Job, error: BaseException, now: float) -> None:
        try:
            self.inner.on_fail(job, error, now)
        finally:
            self.gate.leave(len(job.members) or 1)


@dataclass
class _Piece:
    """Rows ``[offset, offset + rows)`` of a job's batch and their model state. A
    micro-batch is one piece until it runs out of memory; then it is split in halves."""

    offset: int
    rows: int
    state: Any = None  # None: not started (the rows start from the inputs at unit 0)
    unit: int = 0  # the next unit this piece runs


@dataclass
class _JobState:
    micro_states: list[list[_Piece]]
    micro_outputs: list[dict[str, torch.Tensor] | None]
    # the model version it runs on (runtime.engine.ServedModel): held while the job lives,
    # so a version a reload replaced is released only once no job runs on it
    version: Any = None


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class TorchDevice:
    """Runs chunks of jobs on one torch device (scheduler ``Device``).

    A job's batch (its members' inputs concatenated) is split into the plan's micro-batches;
    flat unit ``f`` is unit ``f % num_units`` of micro-batch ``f // num_units``. A chunk ends
    with a sync point: on CUDA an event recorded on the job's stream and waited for; on CPU
    the ops have already finished. Latency-critical jobs run on a high-priority CUDA stream.

    Out of memory: rows that run out of memory are split in halves, restarted from their
    inputs and caught up to where they were; a single row that still runs out of memory
    fails its job, and only its job.
    """

    def __init__(
        self,
        lookup: Callable[[str], Any],
        device: torch.device,
        gate: BatchGate | None = None,
        on_yield: Callable[[Job, float], None] | None = None,
        shards: ShardPool | None = None,
    ) -> None:
        self._lookup = lookup
        self.device = device
        self.gate = gate
        self.on_yield = on_yield
        # batch jobs' rows run as shards side by side (runtime/shards.py)
        self.shards = shards
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._lc_stream = torch.cuda.Stream(device=device, priority=-1)
            self._batch_stream = torch.cuda.Stream(device=device, priority=0)

    def run_chunk(self, chunk: RunChunk) -> float | None:
        """Run ``chunk``; returns how long it stood paused for the CPU lane (None: not beside
        it): the time it waited at its unit boundaries, not the time the lane was busy (a
        unit that started before the lane took work goes on until its end). Where the rows
        run as shards, each step counts its longest-waiting shard."""
        paused = self._run_chunk(chunk)
        return None if chunk.job.latency_critical or self.gate is None else paused

    def _run_chunk(self, chunk: RunChunk) -> float:
        job = chunk.job
        served = self._lookup(job.model)
        if served is None:
            # unloaded while the request waited: not a failure of the model, and a retry
            # may find it loaded again (503 / UNAVAILABLE)
            raise ModelNotReady(f"model '{job.model}' was unloaded")
        st0: _JobState | None = job.device_state
        # a job runs on the version its requests were admitted for, from its first unit to
        # its last, whatever a reload brought meanwhile (its units and plan are that one's)
        version = st0.version if st0 is not None else (_admitted_for(job) or served)
        if getattr(version, "retired", False):
            # its version was unloaded (another loaded since under the name): 503, as above
            raise ModelNotReady(f"model '{job.model}' was unloaded")
        seg = version.segmented
        n = job.num_units
        stream = None
        if self._cuda:
            stream = self._lc_stream if job.latency_critical else self._batch_stream
        ctx = torch.cuda.stream(stream) if stream is not None else nullcontext()
        gate = None if job.latency_critical else self.gate
        paused = 0.0
        with torch.inference_mode(), ctx:
            if job.device_state is None:
                # inputs are copied on the job's own stream, ordered before its units
                job.device_state = self._prepare(job, version)
            st: _JobState = job.device_state
            f = chunk.start
            while f < chunk.end:
                m, u = divmod(f, n)
                stop = min(chunk.end, (m + 1) * n)
                pieces = st.micro_states[m]
                # row shards run side by side, each yielding at its own unit boundaries
                sharded = self.shards is not None and not job.latency_critical and len(pieces) > 1
                if gate is not None and not sharded:
                    paused += self._yield_to_lane(job, gate)
                    stop = f + 1  # on the CPU lane every unit boundary is a sync point
                end = u + (stop - f)
                if sharded:
                    assert self.shards is not None
                    ran = self.shards.run([
                        functools.partial(self._run_shard, job, seg, piece, end)
                        for piece in pieces
                    ])
                    done = [parts for parts, _ in ran]
                    paused += max(waited for _, waited in ran)
                else:
                    done = [self._advance(job, seg, piece, end) for piece in pieces]
                st.micro_states[m] = [part for parts in done for part in parts]
                if stop == (m + 1) * n:
                    finished = [seg.finish(piece.state) for piece in st.micro_states[m]]
                    st.micro_outputs[m] = _concat(finished)
                    st.micro_states[m] = []
                f = stop
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
                event.synchronize()
        return paused

    def _run_shard(
        self, job: Job, seg: Any, piece: _Piece, end: int
    ) -> tuple[list[_Piece], float]:
        """On a shard worker: run ``piece`` up to unit ``end``, yielding at every unit
        boundary while the lane is busy, as a job on one team does. Returns the pieces and
        how long the shard waited for the lane."""
        gate = self.gate
        with torch.inference_mode():
            if gate is None:
                return self._advance(job, seg, piece, end), 0.0
            pieces, waited = [piece], 0.0
            for unit in range(piece.unit + 1, end + 1):
                waited += self._yield_to_lane(job, gate)
                pieces = [part for p in pieces for part in self._advance(job, seg, p, unit)]
            return pieces, waited

    def _yield_to_lane(self, job: Job, gate: BatchGate) -> float:
        """Wait while latency-critical work runs on the lane (a batch unit boundary); returns
        how long it waited."""
        paused = gate.pause_if_closed()
        if paused is None:
            return 0.0
        delay, waited = paused
        if self.on_yield is not None:
            self.on_yield(job, delay)
        return waited

    def _advance(self, job: Job, seg: Any, piece: _Piece, end: int) -> list[_Piece]:
        """Run ``piece`` up to unit ``end``; returns the pieces it became (itself, or its
        halves after it ran out of memory)."""
        try:
            if piece.state is None:
                piece.state = seg.start(self._tensors(_batch(job), piece.offset, piece.rows))
            piece.state = seg.run(piece.state, piece.unit, end)
            piece.unit = end
            return [piece]
        except Exception as exc:
            if not out_of_memory(exc) or piece.rows < 2:
                raise
            piece.state = None  # half run and possibly what filled the memory: start again
            if self._cuda:
                torch.cuda.empty_cache()
            half = piece.rows // 2
            log.warning(
                "job %r ran out of memory on %d rows; retrying them as %d + %d rows",
                job, piece.rows, piece.rows - half, half,
            )
            first = _Piece(piece.offset, piece.rows - half)
            second = _Piece(piece.offset + piece.rows - half, half)
            return self._advance(job, seg, first, end) + self._advance(job, seg, second, end)

    def _tensors(
        self, batch: dict[str, np.ndarray], offset: int, rows: int
    ) -> dict[str, torch.Tensor]:
        return {
            k: torch.from_numpy(v[offset : offset + rows]).to(self.device, non_blocking=True)
            for k, v in batch.items()
        }

    def _prepare(self, job: Job, version: Any) -> _JobState:
        seg = version.segmented
        batch = _batch(job)
        pieces: list[list[_Piece]] = []
        offset = 0
        with torch.inference_mode():
            for size in job.micro_batch_sizes():
                shards = [size]
                if self.shards is not None and not job.latency_critical:
                    shards = shard_sizes(size, self.shards.workers)
                micro = []
                for rows in shards:
                    piece = _Piece(offset, rows)
                    try:
                        piece.state = seg.start(self._tensors(batch, offset, rows))
                    except Exception as exc:
                        if not out_of_memory(exc):
                            raise
                        # no room for its inputs now: started (and split) when it first runs
                    micro.append(piece)
                    offset += rows
                pieces.append(micro)
        return _JobState(pieces, [None] * len(pieces), version)

    @staticmethod
    def outputs(job: Job) -> dict[str, np.ndarray]:
        st: _JobState = job.device_state
        parts = [o for o in st.micro_outputs if o is not None]
        names = list(parts[0])
        out: dict[str, np.ndarray] = {}
        for name in names:
            ts = [p[name] for p in parts]
            t = torch.cat(ts) if len(ts) > 1 else ts[0]
            out[name] = t.detach().to("cpu").numpy()
        return out


def _admitted_for(job: Job) -> Any:
    """The model version ``job``'s requests were admitted for (None: not known, or every
    request already answered); its members share one (their ``batch_key`` says which)."""
    for member in job.members or [job]:
        served = getattr(member.payload, "served", None)
        if served is not None:
            return served
    return None


def _batch(job: Job) -> dict[str, np.ndarray]:
    """The job's inputs: its members' inputs concatenated, writeable for torch."""
    members = job.members or [job]
    batch: dict[str, np.ndarray] = {}
    for name in members[0].payload.inputs:
        parts = [m.payload.inputs[name] for m in members]
        arr = np.concatenate(parts) if len(parts) > 1 else parts[0]
        batch[name] = arr if arr.flags.writeable else arr.copy()
    return batch


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


class ResultListener:
    """Answers requests when their jobs end; records per-chunk metrics (``Listener``)."""

    def __init__(
        self, metrics: Metrics, clock: Clock, speed: Callable[[str], float | None] | None = None
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        # a model's measured speed against its profile (None: not measured enough yet)
        self.speed = speed
        self._speed_shown: dict[str, float] = {}

    def forget_model(self, name: str) -> None:
        """An unloaded model's gauges go (its counters and histograms stay: they count what
        happened). Called on the executor thread, which sets them."""
        self._speed_shown.pop(name, None)
        for gauge in (self.metrics.speed_ratio, self.metrics.sync_interval):
            with contextlib.suppress(KeyError):  # never set for this model
                gauge.remove(name)

    def on_chunk(self, done: ChunkDone, chunk: RunChunk) -> None:
        job = done.job
        label = job.priority.value
        self.metrics.device_busy.labels(job.model, label).inc(done.t1 - done.t0)
        if not job.latency_critical:
            self.metrics.sync_interval.labels(job.model).set(done.end - done.start)
        ratio = self.speed(job.model) if self.speed is not None else None
        if ratio is not None and self._speed_shown.get(job.model) != ratio:
            self._speed_shown[job.model] = ratio
            self.metrics.speed_ratio.labels(job.model).set(ratio)
        if chunk.preempted is not None:
            p = chunk.preempted
            self.metrics.preemptions.labels(p.model, p.priority.value).inc()
        if chunk.start == 0:
            for member in job.members or [job]:
                wait = (job.started_at or done.t0) - member.arrival
                self.metrics.queue_wait.labels(job.model, label).observe(max(0.0, wait))

    def on_complete(self, job: Job, now: float) -> None:
        try:
            outputs = TorchDevice.outputs(job)
        except Exception as exc:  # a model that returned something unusable
            self.on_fail(job, exc, now)
            return
        finally_state = job.device_state
        job.device_state = None
        del finally_state
        members = job.members or [job]
        offset = 0
        for member in members:
            size = member.batch_size
            part = {k: v[offset : offset + size] for k, v in outputs.items()}
            offset += size
            pending: Pending = member.payload
            if job.latency_critical:
                self.metrics.preemption_delay.labels(job.model, job.priority.value).observe(
                    member.preemption_delay or job.preemption_delay
                )
            latency = now - member.arrival
            # a request withdrawn (its client gone) while merged into this job is no miss
            if pending.slo_s is not None and latency > pending.slo_s and not member.cancelled:
                self.metrics.slo_violations.labels(job.model, job.priority.value).inc()
            pending.completed_at = now
            pending.resolve(part)

    def on_reject(self, reject: Reject, now: float) -> None:
        reject.job.payload.resolve(RequestTimeout(reject.reason))

    def on_fail(self, job: Job, error: BaseException, now: float) -> None:
        job.device_state = None
        for member in job.members or [job]:
            member.payload.resolve(
                error if isinstance(error, (InferenceFailed, ModelNotReady)) else InferenceFailed(
                    f"model '{job.model}' failed: {type(error).__name__}: {error}"
                )
            )


class Executor:
    """The executor thread. Restarts its loop if the loop itself raises; ``alive`` tells
    whether the thread runs (the engine reports not-ready and starts a new one if not)."""

    def __init__(
        self, loop: ExecutorLoop, inbox: ThreadInbox, metrics: Metrics, nice: int = 0,
        name: str = "deft-executor", threads: int | None = None, idle: bool = False,
    ) -> None:
        self.threads = threads
        self.idle = idle
        self.loop = loop
        self.inbox = inbox
        self.metrics = metrics
        self.nice = nice
        self.name = name
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.last_error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stopping = False
        self.inbox.reopen()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def restart(self) -> None:
        log.error("executor thread is not running (last error: %r); restarting", self.last_error)
        self.metrics.executor_restarts.inc()
        self.start()

    def _run(self) -> None:
        if self.threads:
            limit_intra_op_threads(self.threads)
        if self.nice or self.idle:
            applied = lower_thread_priority(self.name, self.nice, self.idle)
            log.info("%s thread: %s OS scheduling", self.name, applied)
        while not self._stopping:
            try:
                self.loop.run()
                return
            except Exception as exc:  # a bug in the loop: drop the job in hand, keep serving
                self.last_error = exc
                log.exception("executor loop raised; restarting it")
                self.metrics.executor_restarts.inc()
                current = self.loop.scheduler.drop_current()
                if current is not None:
                    self.loop.listener.on_fail(current, exc, self.loop.clock.now())

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.inbox.stop()
        if self._thread is not None:
            self._thread.join(timeout)
