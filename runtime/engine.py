"""The engine: the one core object the protocol edges (REST, gRPC) call.

It owns the served models, admission (queue bounds), the scheduler's executor thread and
priority settings. Methods that touch torch (loading) run in worker threads; ``infer`` awaits
the executor's answer without blocking the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import math
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from runtime.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ShuttingDown,
)
from runtime.executor import (
    BatchGate,
    Executor,
    GateListener,
    Pending,
    ResultListener,
    ThreadInbox,
    TorchDevice,
)
from runtime.metrics import Metrics
from runtime.shards import ShardPool
from runtime.tensors import TensorSpec
from runtime.threads import lower_thread_priority
from scheduler.clock import Clock, MonotonicClock
from scheduler.core import Scheduler
from scheduler.job import Job
from scheduler.loop import ExecutorLoop
from scheduler.priority import ModelSettings, Priority, PriorityTable
from scheduler.profile import DeviceCosts, Profile

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED = "FAILED"


@dataclass
class ServedModel:
    """A model as the engine serves it: split into units and profiled."""

    name: str
    segmented: object  # runtime.segments.SegmentedModel
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    settings: ModelSettings  # from the model's own configuration
    profile: Profile | None
    max_batch_size: int | None = None
    max_queue_size: int = 64
    max_queue_delay_s: float = 0.0
    platform: str = "pytorch"
    version: str = "1"
    # the priority table's key when it is not ``name`` (a ModelMesh id maps to the
    # InferenceService's name: runtime.modelmesh.ids)
    priority_name: str | None = None
    # the repository files it was loaded from (runtime.model_repository.stamp; None: not
    # from the repository)
    stamp: tuple[object, ...] | None = None
    # a number no other version this engine served has (set when it is registered): jobs
    # of two versions are never merged; ``retired``: unloaded, its requests answer 503
    generation: int = 0
    retired: bool = False

    @property
    def num_units(self) -> int:
        return int(self.segmented.num_units)  # type: ignore[attr-defined]

    @classmethod
    def from_loaded(cls, loaded: Any, name: str | None = None,
                    priority_name: str | None = None) -> ServedModel:
        """From ``runtime.model_repository.load``'s result (its config, units, profile)."""
        cfg = loaded.config
        return cls(
            name=name or loaded.name,
            segmented=loaded.model,
            inputs=cfg.inputs,
            outputs=cfg.outputs,
            settings=cfg.settings,
            profile=profile_from_us(loaded.profile),
            max_batch_size=cfg.max_batch_size,
            max_queue_size=cfg.max_queue_size,
            max_queue_delay_s=cfg.max_queue_delay_ms / 1000.0,
            platform=f"pytorch_{loaded.source.format}",
            priority_name=priority_name,
            stamp=getattr(loaded, "stamp", None),
        )


Loader = Callable[[str], ServedModel]
"""Loads one model by name from the repository (runs torch; called in a worker thread)."""


@dataclass
class _Entry:
    state: ModelState
    served: ServedModel | None = None
    reason: str = ""
    outstanding: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class EngineOptions:
    policy: str = "deft"
    device: str = "cpu"
    costs: DeviceCosts = DeviceCosts()
    default_queue_size: int = 64
    retry_after_s: float = 1.0
    cli_settings: Mapping[str, ModelSettings] = field(default_factory=dict)
    cpu_lane: bool | None = None  # None: on for a CPU device with a preemptive policy
    # with the lane on, the batch executor thread runs under SCHED_IDLE ("idle") or at
    # nice ``batch_nice`` ("normal")
    batch_sched: str = "idle"
    batch_nice: int = 0
    batch_threads: int | None = None  # intra-op threads of the batch executor (None: torch's)
    lane_threads: int = 1  # intra-op threads of the latency-critical lane
    # CPU lane: batch jobs' rows run as up to this many shards side by side, sharing the
    # batch intra-op threads (runtime/shards.py); None: one per thread; below 2: off
    batch_shards: int | None = None
    # while two or more batch models have work, a batch chunk lasts at most this long
    # (scheduler.core.Scheduler's batch_slice_s)
    batch_slice_s: float = 0.02
    # scale each model's profile by how fast its batch chunks measure against it
    # (scheduler.calibration): plans follow the device's speed as it is, not as profiled
    calibrate: bool = True

    def batch_idle(self) -> bool:
        """Whether batch work runs under SCHED_IDLE beside the lane."""
        return self.lane_enabled() and self.batch_sched == "idle"

    def lane_enabled(self) -> bool:
        if self.policy in ("fifo", "priority"):
            return False
        return self.cpu_lane if self.cpu_lane is not None else self.device == "cpu"


class Engine:
    """Serves models through the preemptive scheduler. Called from the event loop thread."""

    def __init__(
        self,
        loader: Loader,
        available: Callable[[], list[str]],
        options: EngineOptions,
        metrics: Metrics,
        clock: Clock | None = None,
        stamp: Callable[[str], object] | None = None,
    ) -> None:
        self._loader = loader
        self._available = available
        # a repository model's files as they are now (runtime.model_repository.stamp): a
        # load of a ready model whose files moved reloads it
        self._stamp = stamp
        self.options = options
        self.metrics = metrics
        self.clock = clock or MonotonicClock()
        self.device = torch.device(options.device)
        self._models: dict[str, _Entry] = {}
        # one load at a time: a profile measured while another model loads is not the
        # model's, and a model asked for twice at once is loaded once
        self._loading = threading.Lock()
        self._table = PriorityTable({})
        # called with a model's name when it becomes ready / is unloaded (other front ends)
        self.on_ready: list[Callable[[str], None]] = []
        self.on_unloaded: list[Callable[[str], None]] = []
        # called, on a thread of its own, once a version a reload replaced is no longer used
        # by any request and has let go of its weights
        self.on_released: list[Callable[[str], None]] = []
        # each model's settings in force, set where they change (the scheduler's own copy is
        # set on the executor thread, later): what admission reads
        self._settings: dict[str, ModelSettings] = {}
        # a load, a reload, an unload and a table change decide a model's entry one at a time
        self._registry = threading.Lock()
        self._generations = itertools.count(1)
        # every version of each name still alive (a reload's old one while its requests
        # run): an unload retires them all
        self._versions: dict[str, weakref.WeakValueDictionary[int, ServedModel]] = {}
        self._accepting = True
        self._started = False
        self._outstanding = 0
        self._idle = threading.Condition()
        lane = options.lane_enabled()
        self.scheduler = Scheduler(
            options.policy, options.costs, batching=self.batch_limit,
            batch_delay=self._batch_delay,
            # beside the lane at idle OS priority, latency-critical jobs never wait for a
            # batch unit to end: splitting batches would only cost throughput
            split_batches=not options.batch_idle(),
            batch_slice_s=options.batch_slice_s,
            calibrate=options.calibrate,
        )
        self.inbox = ThreadInbox(self.clock)
        self.inbox.on_cancelled = self._on_cancelled
        self.listener = ResultListener(
            metrics, self.clock, self.scheduler.measured_speed if options.calibrate else None)
        self.gate = BatchGate(self.clock) if lane else None
        self.shards = self._shard_pool(options) if lane else None
        self.device_runner = TorchDevice(
            self._served, self.device, self.gate, self._on_yield, shards=self.shards,
        )
        self.executor = Executor(
            ExecutorLoop(self.scheduler, self.device_runner, self.inbox, self.listener, self.clock),
            self.inbox,
            metrics,
            # with the CPU lane, batch work runs at a lower OS priority than everything else
            nice=options.batch_nice if self.gate is not None else 0,
            idle=options.batch_idle(),
            threads=options.batch_threads,
        )
        # CPU lane: latency-critical jobs run on a thread of their own while batch work
        # yields at its next unit boundary (the README's "How it works").
        self.lc_scheduler: Scheduler | None = None
        self.lc_inbox: ThreadInbox | None = None
        self.lc_executor: Executor | None = None
        if self.gate is not None:
            self.lc_scheduler = Scheduler(
                options.policy, options.costs, streams=self.scheduler.streams,
                batching=self.batch_limit,
                # beside running batch work, measured times are not solo times (nor are
                # they the profile's speed: the lane's scheduler is not calibrated)
                solo_from_profile=True,
            )
            self.lc_inbox = ThreadInbox(self.clock)
            gate = self.gate

            def lane_cancelled(job: Job) -> None:
                self._on_cancelled(job)
                gate.leave(len(job.members) or 1)

            self.lc_inbox.on_cancelled = lane_cancelled
            self.lc_executor = Executor(
                ExecutorLoop(
                    self.lc_scheduler,
                    TorchDevice(self._served, self.device),
                    self.lc_inbox,
                    GateListener(self.listener, self.gate),
                    self.clock,
                ),
                self.lc_inbox,
                metrics,
                name="deft-latency-lane",
                threads=options.lane_threads,
            )

    @staticmethod
    def _shard_pool(options: EngineOptions) -> ShardPool | None:
        threads = options.batch_threads or torch.get_num_threads()
        workers = options.batch_shards if options.batch_shards is not None else threads
        if workers < 2:
            return None
        nice = options.batch_nice
        idle = options.batch_idle()

        def setup(name: str) -> None:
            if nice or idle:
                lower_thread_priority(name, nice, idle)

        log.info("CPU lane: batch jobs run as up to %d row shards", workers)
        return ShardPool(workers, threads, setup)

    # -- lifecycle -----------------------------------------------------------------------

    def _executors(self) -> list[Executor]:
        return [e for e in (self.executor, self.lc_executor) if e is not None]

    def _inboxes(self) -> list[ThreadInbox]:
        return [i for i in (self.inbox, self.lc_inbox) if i is not None]

    def _on_yield(self, job: Job, delay: float) -> None:
        self.metrics.preemptions.labels(job.model, job.priority.value).inc()
        self.metrics.preemption_delay.labels(job.model, job.priority.value).observe(delay)

    def start(self) -> None:
        self._started = True
        for executor in self._executors():
            executor.start()

    def ensure_executor(self) -> bool:
        """Restart the executor thread if it died; True if it was running."""
        if not self._accepting or not self._started:
            return True
        ok = True
        for executor in self._executors():
            if not executor.alive:
                executor.restart()
                ok = False
        return ok

    def begin_shutdown(self) -> None:
        """Stop admitting requests; accepted ones still run to their answer."""
        self._accepting = False

    def wait_idle(self, timeout: float) -> bool:
        """Block until every admitted request has been answered (or ``timeout``)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def stop(self, grace_s: float = 30.0) -> None:
        """Graceful stop: refuse new work, answer the admitted requests, stop the thread.
        Safe to call from a signal handler's thread; never blocks longer than ``grace_s``."""
        self.begin_shutdown()
        self.wait_idle(grace_s)
        for executor in self._executors():
            executor.stop(timeout=5.0)
        if self.shards is not None:
            self.shards.stop()

    # -- repository ----------------------------------------------------------------------

    def load_sync(self, name: str) -> ServedModel:
        """Load ``name`` (blocking: torch work). Failure is recorded and raised.

        A ready model loads again only where its files changed since (a reload): the new
        version loads while the old one serves, then takes the requests that arrive after;
        the ones admitted before finish on the old. A reload that fails leaves the old
        version serving, and says so."""
        served = self._ready_served(name)
        if served is not None and not self._changed(served):
            return served
        entry = self._models.get(name)
        if entry is None or entry.state not in (ModelState.LOADING, ModelState.READY):
            entry = self._models[name] = _Entry(ModelState.LOADING)  # the index shows it so
        with self._loading:
            # an unload since this call began (while another load held the lock) stands
            if self._models.get(name) is not entry or entry.state is ModelState.UNAVAILABLE:
                raise ModelNotReady(f"model '{name}' was unloaded while its load waited")
            # the call this one waited for may have loaded it
            current = self._ready_served(name)
            if current is None:
                return self._load_locked(name, entry)
            if not self._changed(current):
                return current
            return self._reload_locked(name, current)

    def _changed(self, served: ServedModel) -> bool:
        if self._stamp is None or served.stamp is None:
            return False
        try:
            now = self._stamp(served.name)
        except Exception as exc:  # gone from the repository, or unreadable
            log.debug("model %s: files unreadable: %s", served.name, exc)
            now = None
        return now != served.stamp

    def _reload_locked(self, name: str, old: ServedModel) -> ServedModel:
        entry = self._models[name]
        log.info("model %s: its files changed; loading them beside the version serving", name)
        try:
            served = self._loader(name)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, (ModelLoadError, ModelNotFound)) \
                else f"{type(exc).__name__}: {exc}"
            entry.reason = f"the last load failed ({reason}); the version loaded before serves"
            log.error("model %s failed to reload, the version loaded before serves: %s",
                      name, reason)
            raise ModelLoadError(
                f"model '{name}' failed to reload: {reason}; the version loaded before "
                "keeps serving") from exc
        # the old version goes once no request and no job holds it any more (replaced here,
        # or unloaded meanwhile): then its units let go of their weights (see
        # SegmentedModel.release)
        weakref.finalize(old, self._released, name, old.segmented)
        if not self._register(served, expect=entry):
            raise ModelNotReady(f"model '{name}' was unloaded while it reloaded")
        return served

    def _released(self, name: str, segmented: object) -> None:
        # called where the old version's last reference went (the executor thread, say):
        # dropping the weights takes a moment; the hooks run on a thread of their own
        release = getattr(segmented, "release", None)
        if callable(release):
            release()
        log.info("model %s: the version a reload replaced let go of its weights", name)
        if self.on_released:
            threading.Thread(target=lambda: [hook(name) for hook in self.on_released],
                             name="deft-release", daemon=True).start()

    def _ready_served(self, name: str) -> ServedModel | None:
        entry = self._models.get(name)
        return entry.served if entry is not None and entry.state is ModelState.READY else None

    def _load_locked(self, name: str, entry: _Entry) -> ServedModel:
        entry.state, entry.reason = ModelState.LOADING, ""
        try:
            served = self._loader(name)
        except ModelNotFound:
            if self._models.get(name) is entry:
                self._models.pop(name, None)
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            with self._registry:
                if self._models.get(name) is entry and entry.state is ModelState.LOADING:
                    entry.state, entry.reason = ModelState.FAILED, reason
            log.error("model %s failed to load: %s", name, reason)
            raise ModelLoadError(f"model '{name}' failed to load: {reason}") from exc
        if not self._register(served, expect=entry):
            raise ModelNotReady(f"model '{name}' was unloaded while it loaded")
        return served

    def _register(self, served: ServedModel, expect: _Entry | None = None) -> bool:
        """Serve ``served``; with ``expect`` (the entry a load began with) only if that entry
        is still the model's and was not unloaded meanwhile. False: it was, nothing done."""
        name = served.name
        profile = served.profile
        with self._registry:
            settings = self.settings_for(name, served)  # the table in force, not a moment old
            entry = self._models.get(name)
            if expect is not None and (entry is not expect or entry.state not in (
                    ModelState.LOADING, ModelState.READY)):
                log.info("model %s was unloaded while it loaded: the version loaded is "
                         "dropped", name)
                return False
            served.generation = next(self._generations)
            served.retired = False  # a loader may hand the same object back after an unload
            self._versions.setdefault(name, weakref.WeakValueDictionary())[served.generation] = \
                served
            self._settings[name] = settings
            for inbox in self._inboxes():
                inbox.call(lambda s: s.set_model(name, settings, profile))
            if entry is not None and entry.state in (ModelState.READY, ModelState.LOADING):
                # the entry the load began with (a reload: the requests admitted before
                # still count against the queue bound; loads waiting for this one find it)
                entry.state, entry.served, entry.reason = ModelState.READY, served, ""
            else:
                self._models[name] = _Entry(ModelState.READY, served)
        self.metrics.declare(name, settings.priority.value, settings.slo_ms is not None)
        for hook in self.on_ready:
            hook(served.name)
        log.info(
            "model %s ready: %d units, %s%s", served.name, served.num_units,
            settings.priority.value, f", SLO {settings.slo_ms} ms" if settings.slo_ms else "",
        )
        return True

    def add_served(self, served: ServedModel) -> None:
        """Serve an already prepared model (used by tests and the demo)."""
        self._register(served)

    async def load(self, name: str) -> None:
        if name not in self._available() and name not in self._models:
            raise ModelNotFound(name)
        await asyncio.get_running_loop().run_in_executor(None, self.load_sync, name)

    async def unload(self, name: str) -> None:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(name)
        with self._registry:
            for version in list(self._versions.pop(name, {}).values()):
                version.retired = True  # their requests still queued answer 503
            entry.state = ModelState.UNAVAILABLE
            entry.served = None
            self._settings.pop(name, None)
            if name not in self._available():
                # not in the repository (placed by ModelMesh, say): once unloaded, not known
                # here at all (404 / NOT_FOUND), where a repository model stays known (503 /
                # UNAVAILABLE) and may be loaded again
                self._models.pop(name, None)
        for inbox in self._inboxes():
            inbox.call(lambda s: s.remove_model(name))
        # after the scheduler forgot it, on the thread that sets them
        self.inbox.call(lambda _: self.listener.forget_model(name))
        for hook in self.on_unloaded:
            hook(name)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository's models and the ones loaded from elsewhere, with their state
        (``ready_only``: the models ready now), as the repository index answers."""
        names = sorted(set(self._available()) | set(self._models))
        out = []
        for name in names:
            entry = self._models.get(name)
            state = entry.state.value if entry else ModelState.UNAVAILABLE.value
            item = {"name": name, "version": "1", "state": state}
            if entry is not None and entry.reason:
                item["reason"] = entry.reason
            out.append(item)
        return [m for m in out if m["state"] == "READY"] if ready_only else out

    # -- settings ------------------------------------------------------------------------

    def settings_for(self, name: str, served: ServedModel | None = None) -> ModelSettings:
        """Priority table, then the model's configuration, then the command line; the table
        and the command line know the model by ``served.priority_name`` where it has one."""
        key = served.priority_name if served is not None and served.priority_name else name
        from_table = self._table.get(key)
        if from_table is not None:
            return from_table
        if served is not None and (
            served.settings != ModelSettings() or key not in self.options.cli_settings
        ):
            return served.settings
        return self.options.cli_settings.get(key, ModelSettings())

    def apply_priorities(self, table: PriorityTable) -> None:
        """Swap in a new priority table; applies at the next sync point, drops nothing."""
        with self._registry:  # not interleaved with a load's swap (its profile, settings)
            self._table = table
            for name, entry in list(self._models.items()):
                if entry.served is not None:
                    served = entry.served
                    settings = self.settings_for(name, served)
                    self._settings[name] = settings
                    apply = functools.partial(_set_model, name=name, settings=settings,
                                              profile=served.profile)
                    for inbox in self._inboxes():
                        inbox.call(apply)
        log.info("priority table applied: %d entries", len(table.models))

    def _batch_delay(self, model: str) -> float:
        served = self._served(model)
        return served.max_queue_delay_s if served is not None else 0.0

    def batch_limit(self, model: str, served: ServedModel | None = None) -> int | None:
        """The largest batch ``model`` (its version ``served``; default: the one serving)
        takes now (None: unbounded, or not loaded)."""
        current = self._served(model)
        served = served or current
        if served is None:
            return None
        # a version a reload replaced keeps the bound its own configuration gave it
        settings = self._settings.get(model) if served is current \
            else self.settings_for(model, served)
        limit = settings.max_batch_size if settings and settings.max_batch_size else None
        # a bound from the table or the command line lowers the one the model's own config
        # names (it was exported and profiled for batches up to that), never raises it; a
        # model whose config names none takes it as it is
        named = served.settings.max_batch_size
        if limit is not None and named is not None:
            return min(limit, named)
        return limit or served.max_batch_size

    def current_settings(self, name: str, served: ServedModel | None = None) -> ModelSettings:
        """The settings ``name`` is served with now (admission's view)."""
        return self._settings.get(name) or self.settings_for(name, served)

    def check_batch(
        self, model: str, batch: int, served: ServedModel | None = None
    ) -> int | None:
        """Refuse (``InvalidInput``) a batch larger than ``model`` (its version ``served``)
        takes now; returns that bound (None: unbounded)."""
        limit = self.batch_limit(model, served)
        if limit is not None and batch > limit:
            raise InvalidInput(
                f"batch of {batch} exceeds model '{model}''s max batch size of {limit}"
            )
        return limit

    # -- serving -------------------------------------------------------------------------

    def _served(self, name: str) -> ServedModel | None:
        entry = self._models.get(name)
        return entry.served if entry is not None else None

    def model(self, name: str) -> ServedModel:
        entry = self._models.get(name)
        if entry is None:
            if name in self._available():
                raise ModelNotReady(f"model '{name}' is not loaded")
            raise ModelNotFound(name)
        if entry.state is not ModelState.READY or entry.served is None:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' is {entry.state.value.lower()}{detail}")
        return entry.served

    def model_ready(self, name: str) -> bool:
        entry = self._models.get(name)
        if entry is None and name not in self._available():
            raise ModelNotFound(name)
        return entry is not None and entry.state is ModelState.READY

    def ready(self) -> bool:
        return self._accepting and all(e.alive for e in self._executors())

    def ready_models(self) -> list[str]:
        return sorted(n for n, e in self._models.items() if e.state is ModelState.READY)

    def metadata(self, name: str) -> dict[str, Any]:
        served = self.model(name)
        return {
            "name": name,
            "versions": [served.version],
            "platform": served.platform,
            "inputs": [s.to_metadata() for s in served.inputs],
            "outputs": [s.to_metadata() for s in served.outputs],
        }

    def check_room(self, name: str) -> None:
        """Refuse at once (``QueueFull``) when ``name``'s queue is already at its bound, before
        the caller spends anything on the request; ``infer`` checks again and reserves."""
        served = self.model(name)
        entry = self._models[name]
        if entry.outstanding >= served.max_queue_size:
            settings = self.current_settings(name, served)
            self.metrics.requests.labels(name, settings.priority.value, "refused").inc()
            raise QueueFull(
                f"model '{name}' has {entry.outstanding} requests queued, its limit",
                retry_after_s=self.options.retry_after_s,
            )

    async def infer(
        self,
        name: str,
        inputs: dict[str, np.ndarray],
        *,
        priority: int = 0,
        timeout_us: int | None = None,
        received_at: float | None = None,
        served: ServedModel | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request through the scheduler; returns its outputs by name.

        ``received_at`` (this engine's clock): when the server began reading the request. A
        latency-critical request then reports the time from then to its answer here, less
        its time in the scheduler and on the device (waiting for the event loop, reading,
        decoding, the hand-offs to the executor and back; not encoding the response) to the
        ``deft`` policy, which keeps that much of the SLO free of batch work.

        Raises ``ShuttingDown``, ``ModelNotFound``/``ModelNotReady``, ``InvalidInput``,
        ``QueueFull`` (refused at once, never queued), ``RequestTimeout`` (queued past its
        timeout, never run) or ``InferenceFailed``. Cancelling the awaiting task withdraws a
        job that has not started.

        ``served``: the version of the model the caller checked the inputs against (and
        will encode the outputs with), where a reload may have brought another since; the
        request runs on that version. Default: the version serving now.
        """
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        current = self.model(name)
        if served is not None and served.retired:
            raise ModelNotReady(f"model '{name}' was unloaded")
        served = served or current
        self.ensure_executor()
        entry = self._models[name]
        settings = self.current_settings(name, current)
        klass = settings.priority.with_request_level(priority)
        batch = _batch_size(inputs, served)
        limit = self.check_batch(name, batch, served)
        with entry.lock:
            if entry.outstanding >= served.max_queue_size:
                self.metrics.requests.labels(name, klass.value, "refused").inc()
                raise QueueFull(
                    f"model '{name}' has {entry.outstanding} requests queued, its limit",
                    retry_after_s=self.options.retry_after_s,
                )
            entry.outstanding += 1
        with self._idle:
            self._outstanding += 1
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        slo_s = settings.slo_ms / 1000.0 if settings.slo_ms else None
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        pending = Pending(name, klass.value, inputs, future, loop, now, slo_s, served=served)
        pending.on_done = lambda: self._finished(entry, pending)
        job = Job(
            model=name,
            priority=klass,
            batch_size=batch,
            arrival=now,
            num_units=served.num_units,
            deadline=now + slo_s if slo_s is not None and klass is settings.priority else None,
            timeout_at=now + timeout_us / 1e6 if timeout_us else None,
            payload=pending,
            # requests for two versions of a model (a reload) never share a job
            batch_key=(served.generation,
                       tuple((k, v.shape[1:], v.dtype.str) for k, v in inputs.items())),
            batch_cap=limit,
        )
        if klass is Priority.LATENCY_CRITICAL and job.deadline is None:
            job.deadline = now + 3600.0
        self.metrics.queue_depth.labels(name, klass.value).inc()
        inbox = self.inbox
        if self.lc_inbox is not None and self.gate is not None and job.latency_critical:
            inbox = self.lc_inbox
            self.gate.enter()
        inbox.submit(job)
        try:
            # cancelling the caller cancels ``future`` too; a job already running still
            # resolves it later, which then only settles the accounting (Pending.resolve)
            result = await future
        except asyncio.CancelledError:
            inbox.cancel(job)
            self.metrics.requests.labels(name, klass.value, "cancelled").inc()
            raise
        except BaseException as exc:
            outcome = type(exc).__name__
            self.metrics.requests.labels(name, klass.value, _outcome(outcome)).inc()
            raise
        answered = self.clock.now()
        latency = answered - now
        if received_at is not None and job.latency_critical and pending.completed_at is not None:
            in_scheduler = pending.completed_at - now
            self.scheduler.streams.on_host_time(name, (answered - received_at) - in_scheduler)
        self.metrics.request_latency.labels(name, klass.value).observe(latency)
        self.metrics.requests.labels(name, klass.value, "ok").inc()
        return result

    def _finished(self, entry: _Entry, pending: Pending) -> None:
        with entry.lock:
            entry.outstanding -= 1
        self.metrics.queue_depth.labels(pending.model, pending.priority_label).dec()
        with self._idle:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()

    def _on_cancelled(self, job: Job) -> None:
        # called on the executor thread at a sync point: a job withdrawn (never to run
        # again) lets go of its intermediate tensors and its model version at once
        job.device_state = None
        job.payload.resolve(None)

    @property
    def outstanding(self) -> int:
        return self._outstanding


def _set_model(
    scheduler: Scheduler, *, name: str, settings: ModelSettings, profile: Profile | None
) -> None:
    scheduler.set_model(name, settings, profile)


def _outcome(exc_name: str) -> str:
    return {
        "RequestTimeout": "timeout",
        "InferenceFailed": "failed",
    }.get(exc_name, "rejected")


def _batch_size(inputs: Mapping[str, np.ndarray], served: ServedModel) -> int:
    sizes = set()
    for spec in served.inputs:
        arr = inputs.get(spec.name)
        if arr is None:
            raise InvalidInput(f"input '{spec.name}' is missing")
        if arr.ndim == 0:
            raise InvalidInput(f"input '{spec.name}' has no batch dimension")
        sizes.add(int(arr.shape[0]))
    if len(sizes) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(sizes)}")
    size = sizes.pop()
    if size < 1:
        raise InvalidInput("the batch dimension must be at least 1")
    return size


def profile_from_us(data: Mapping[str, list[float]] | None) -> Profile | None:
    """The scheduler's profile from the profiler's ``{"<batch>": [us, ...]}`` shape."""
    if not data:
        return None
    if any(not math.isfinite(x) for row in data.values() for x in row):
        return None
    return Profile.from_us(data)
