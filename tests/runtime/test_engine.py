"""The engine: admission, timeouts, cancellation, failures, priorities, preemption order."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest
import torch

from runtime.engine import EngineOptions
from runtime.errors import (
    InferenceFailed,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    RequestTimeout,
    ShuttingDown,
)
from runtime.priorities import PriorityFileWatcher
from scheduler.clock import FakeClock
from scheduler.priority import Priority
from scheduler.profile import Profile
from tests.runtime.helpers import make_engine, served_mlp

X = np.ones((1, 4), dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def test_a_full_queue_refuses_at_once_and_nothing_accepted_is_lost():
    model, _ = served_mlp(max_queue_size=2)
    engine = make_engine([model])  # executor not started: requests stay queued

    async def go():
        first = [asyncio.ensure_future(engine.infer("mlp", {"x": X})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await engine.infer("mlp", {"x": X})
        engine.start()
        results = await asyncio.gather(*first)
        assert all(r["y"].shape == (1, 3) for r in results)
        assert engine.outstanding == 0

    run(go())
    engine.stop(1.0)


def test_a_request_queued_past_its_timeout_is_answered_with_an_error_not_run():
    clock = FakeClock()
    model, _ = served_mlp()
    engine = make_engine([model], clock=clock)

    async def go():
        fut = asyncio.ensure_future(engine.infer("mlp", {"x": X}, timeout_us=1000))
        await asyncio.sleep(0)
        clock.advance(0.5)
        engine.start()
        with pytest.raises(RequestTimeout):
            await fut

    run(go())
    engine.stop(1.0)


def test_a_request_queued_when_its_model_is_unloaded_is_answered_not_ready():
    model, _ = served_mlp()
    engine = make_engine([model])

    async def go():
        fut = asyncio.ensure_future(engine.infer("mlp", {"x": X}))
        await asyncio.sleep(0)  # queued, the executor not yet started
        await engine.unload("mlp")
        engine.start()
        with pytest.raises(ModelNotReady, match="'mlp' was unloaded"):
            await fut
        assert engine.outstanding == 0

    run(go())
    engine.stop(1.0)


def test_cancelling_a_queued_request_withdraws_its_job():
    model, _ = served_mlp()
    engine = make_engine([model])

    async def go():
        fut = asyncio.ensure_future(engine.infer("mlp", {"x": X}))
        await asyncio.sleep(0)
        fut.cancel()
        await asyncio.sleep(0)
        engine.start()
        for _ in range(200):
            if engine.outstanding == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.outstanding == 0
        assert (await engine.infer("mlp", {"x": X}))["y"].shape == (1, 3)

    run(go())
    engine.stop(1.0)
    counted = {s.labels["outcome"]: s.value for m in engine.metrics.requests.collect()
               for s in m.samples if s.name.endswith("_total")}
    assert counted == {"cancelled": 1.0, "ok": 1.0}


def test_a_model_whose_forward_raises_fails_only_its_own_requests():
    good, _ = served_mlp("good")
    bad, _ = served_mlp("bad")

    class Boom:
        num_units = 1

        def start(self, inputs):
            return inputs

        def run(self, state, start, end):
            raise RuntimeError("kaboom")

    bad.segmented = Boom()
    engine = make_engine([good, bad])
    engine.start()

    async def go():
        with pytest.raises(InferenceFailed, match="kaboom"):
            await engine.infer("bad", {"x": X})
        assert (await engine.infer("good", {"x": X}))["y"].shape == (1, 3)

    run(go())
    assert engine.ready()
    engine.stop(1.0)


def test_shutdown_refuses_new_work_and_answers_accepted_work():
    model, _ = served_mlp()
    engine = make_engine([model])

    async def go():
        accepted = asyncio.ensure_future(engine.infer("mlp", {"x": X}))
        await asyncio.sleep(0)
        engine.begin_shutdown()
        with pytest.raises(ShuttingDown):
            await engine.infer("mlp", {"x": X})
        engine.start()
        assert (await accepted)["y"].shape == (1, 3)

    run(go())
    assert engine.wait_idle(1.0)
    engine.stop(1.0)


def test_dead_executor_thread_is_reported_and_restarted():
    model, _ = served_mlp()
    engine = make_engine([model])
    engine.start()
    engine.executor.stop(1.0)  # the thread is gone
    assert not engine.ready()
    assert engine.ensure_executor() is False  # restarted
    assert engine.ready()
    assert run(engine.infer("mlp", {"x": X}))["y"].shape == (1, 3)
    engine.stop(1.0)


def test_latency_critical_request_overtakes_queued_batch_work():
    batch, _ = served_mlp("batch")
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    engine = make_engine([batch, lc], policy="layer")
    order: list[str] = []
    orig = engine.listener.on_complete

    def record(job, now):
        order.append(job.model)
        orig(job, now)

    engine.listener.on_complete = record

    async def go():
        jobs = [asyncio.ensure_future(engine.infer("batch", {"x": X})) for _ in range(3)]
        await asyncio.sleep(0)
        urgent = asyncio.ensure_future(engine.infer("lc", {"x": X}))
        await asyncio.sleep(0)
        engine.start()
        await asyncio.gather(urgent, *jobs)

    run(go())
    # dynamic batching merges the three batch requests into one job; the latency-critical
    # request, submitted later, still runs first
    assert order[0] == "lc"
    engine.stop(1.0)


def test_priority_file_changes_apply_without_restart(tmp_path):
    model, _ = served_mlp("mlp")
    engine = make_engine([model])
    engine.start()
    path = tmp_path / "priorities.yaml"
    watcher = PriorityFileWatcher(path, engine.apply_priorities)
    assert watcher.check()  # missing file: empty table
    path.write_text("models:\n  mlp: {priority: latency-critical, slo_ms: 50}\n")
    assert watcher.check()
    assert engine.settings_for("mlp", model).priority is Priority.LATENCY_CRITICAL
    path.write_text("models: [oops\n")
    assert not watcher.check() and watcher.errors == 1
    assert engine.settings_for("mlp", model).slo_ms == 50
    assert run(engine.infer("mlp", {"x": X}))["y"].shape == (1, 3)
    done = threading.Event()
    engine.inbox.call(lambda s: done.set())
    assert done.wait(2.0)
    assert engine.scheduler.settings["mlp"].priority is Priority.LATENCY_CRITICAL
    engine.stop(1.0)


def test_a_table_s_max_batch_size_lowers_the_bound_a_model_s_config_names_never_raises_it():
    from runtime.errors import InvalidInput
    from scheduler.priority import ModelSettings, PriorityTable

    named, _ = served_mlp("named", max_batch_size=8)  # its config names 8
    named.settings = ModelSettings(max_batch_size=8)
    unnamed, _ = served_mlp("unnamed", max_batch_size=1)  # its config names none: 1
    engine = make_engine([named, unnamed])
    engine.start()
    for model, bound, limit in (("named", 64, 8), ("named", 4, 4), ("unnamed", 6, 6)):
        engine.apply_priorities(PriorityTable({model: ModelSettings(max_batch_size=bound)}))
        done = threading.Event()
        engine.inbox.call(lambda s, d=done: d.set())
        assert done.wait(2.0)
        assert engine.batch_limit(model) == limit

        async def go(model=model, limit=limit):
            with pytest.raises(InvalidInput, match=f"max batch size of {limit}"):
                await engine.infer(model, {"x": np.zeros((limit + 1, 4), np.float32)})
            return await engine.infer(model, {"x": np.zeros((limit, 4), np.float32)})

        assert run(go())["y"].shape == (limit, 3)
    engine.stop(1.0)


def test_outputs_match_the_whole_model_under_dynamic_batching_and_micro_batches():
    model, module = served_mlp(max_batch_size=8)
    engine = make_engine([model], policy="layer")
    xs = [np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32) for i in range(4)]

    async def go():
        futs = [asyncio.ensure_future(engine.infer("mlp", {"x": x})) for x in xs]
        await asyncio.sleep(0)
        engine.start()
        return await asyncio.gather(*futs)

    results = run(go())
    with torch.no_grad():
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_allclose(r["y"], module(torch.from_numpy(x)).numpy(), rtol=1e-5)
    engine.stop(1.0)


def test_two_batch_models_take_turns_on_the_device_and_answer_correctly():
    # every unit predicted at 15 ms: with a 20 ms slice, a chunk is one unit while the other
    # batch model has work
    slow, slow_module = served_mlp("slow")
    fast, fast_module = served_mlp("fast")
    for m in (slow, fast):
        m.profile = Profile({1: tuple([0.015] * m.segmented.num_units)})
    engine = make_engine([slow, fast], options=EngineOptions(policy="deft", batch_slice_s=0.02))
    chunks: list[tuple[str, int, int]] = []
    orig = engine.listener.on_chunk

    def record(done, chunk):
        chunks.append((chunk.job.model, chunk.start, chunk.end))
        orig(done, chunk)

    engine.listener.on_chunk = record
    xs = {name: np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32)
          for i, name in enumerate(("slow", "fast"))}

    async def go():
        futs = {name: asyncio.ensure_future(engine.infer(name, {"x": x}))
                for name, x in xs.items()}
        await asyncio.sleep(0)
        engine.start()
        return {name: await fut for name, fut in futs.items()}

    results = run(go())
    engine.stop(1.0)
    with torch.no_grad():
        for name, module in (("slow", slow_module), ("fast", fast_module)):
            expected = module(torch.from_numpy(xs[name])).numpy()
            np.testing.assert_allclose(results[name]["y"], expected, rtol=1e-5)
    models = [m for m, _, _ in chunks]
    assert all(end - start == 1 for _, start, end in chunks), chunks
    # neither model's job ran start to finish while the other waited
    assert models.index("fast") < len(models) - 1 - models[::-1].index("slow"), models


def _policy_of(executor) -> int:
    return os.sched_getscheduler(executor._thread.native_id)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_with_the_cpu_lane_batch_work_runs_under_sched_idle_and_the_lane_does_not():
    model, _ = served_mlp()
    engine = make_engine([model])
    engine.start()
    try:
        assert run(engine.infer("mlp", {"x": X}))["y"].shape == (1, 3)
        assert _policy_of(engine.executor) == os.SCHED_IDLE
        assert _policy_of(engine.lc_executor) == os.SCHED_OTHER
    finally:
        engine.stop(1.0)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_normal_batch_scheduling_keeps_the_executor_at_its_nice_value():
    model, _ = served_mlp()
    engine = make_engine([model], options=EngineOptions(batch_sched="normal", batch_nice=3))
    engine.start()
    try:
        assert run(engine.infer("mlp", {"x": X}))["y"].shape == (1, 3)
        tid = engine.executor._thread.native_id
        assert _policy_of(engine.executor) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, tid) == 3
    finally:
        engine.stop(1.0)


def test_without_the_cpu_lane_nothing_is_lowered():
    model, _ = served_mlp()
    engine = make_engine([model], policy="fifo")
    engine.start()
    try:
        assert run(engine.infer("mlp", {"x": X}))["y"].shape == (1, 3)
        assert engine.lc_executor is None
        assert _policy_of(engine.executor) == os.SCHED_OTHER
    finally:
        engine.stop(1.0)


def test_a_refused_sched_idle_falls_back_to_nice_19(monkeypatch):
    from runtime import threads as ex

    def refuse(*_a):
        raise PermissionError("not allowed")

    applied = []
    monkeypatch.setattr(ex.os, "sched_setscheduler", refuse)
    monkeypatch.setattr(ex.os, "setpriority", lambda _w, _t, n: applied.append(n))
    assert ex.lower_thread_priority("t", 0, idle=True) == "nice 19"
    assert applied == [19]


def test_batches_are_split_into_micro_batches_only_where_the_lane_does_not_shield_them():
    model, _ = served_mlp()
    idle = make_engine([model])
    assert idle.scheduler.policy.ctx.split_batches is False  # lane + SCHED_IDLE
    normal = make_engine([model], options=EngineOptions(batch_sched="normal"))
    assert normal.scheduler.policy.ctx.split_batches is True
    no_lane = make_engine([model], options=EngineOptions(cpu_lane=False))
    assert no_lane.scheduler.policy.ctx.split_batches is True


def test_loads_run_one_at_a_time_and_a_model_asked_for_twice_loads_once():
    import threading

    from prometheus_client import CollectorRegistry

    from runtime.engine import Engine, EngineOptions
    from runtime.metrics import Metrics

    model, _ = served_mlp()
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []
    engine: Engine | None = None

    def loader(name: str):
        calls.append(name)
        assert engine is not None and engine._loading.locked()
        inside.set()
        assert release.wait(30)
        return model

    engine = Engine(loader, lambda: ["mlp"], EngineOptions(policy="deft"),
                    Metrics(CollectorRegistry()))
    results = []
    first = threading.Thread(target=lambda: results.append(engine.load_sync("mlp")))
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=lambda: results.append(engine.load_sync("mlp")))
    second.start()
    release.set()
    first.join(30)
    second.join(30)
    assert results == [model, model] and calls == ["mlp"]
    assert engine.model_ready("mlp")
    engine.stop(1.0)


def test_a_latency_critical_request_reports_its_time_outside_the_device():
    clock = FakeClock()
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    batch, _ = served_mlp("b")
    engine = make_engine([lc, batch], clock=clock)
    engine.start()

    async def go():
        # read 4 ms before it reached the engine; the frozen clock puts no time on the device
        await engine.infer("lc", {"x": X}, received_at=clock.now() - 0.004)
        await engine.infer("lc", {"x": X})  # no receipt time (gRPC): nothing reported
        await engine.infer("b", {"x": X}, received_at=clock.now() - 0.004)  # batch: nothing

    run(go())
    engine.stop(1.0)
    assert list(engine.scheduler.streams._streams["lc"].host_samples) == [pytest.approx(0.004)]
    assert "b" not in engine.scheduler.streams._streams


class _ReadHookClock(FakeClock):
    """A fake clock that calls ``hook`` (if set) on each reading."""

    hook = None

    def now(self) -> float:
        if self.hook is not None:
            self.hook()
        return super().now()


class _UnitHook:
    """A segmented model look-alike that calls ``hook(unit)`` before running each unit."""

    def __init__(self, inner, hook) -> None:
        self.inner, self.hook = inner, hook
        self.num_units = inner.num_units

    def start(self, inputs):
        return self.inner.start(inputs)

    def run(self, state, start, end):
        for unit in range(start, end):
            self.hook(unit)
            state = self.inner.run(state, unit, unit + 1)
        return state

    def finish(self, state):
        return self.inner.finish(state)


def _batch_job(served):
    from types import SimpleNamespace

    from scheduler.job import Job, RunChunk

    n = served.segmented.num_units
    job = Job(model=served.name, priority=Priority.BATCH, batch_size=2, arrival=0.0,
              num_units=n, payload=SimpleNamespace(inputs={"x": np.ones((2, 4), np.float32)}))
    return RunChunk(job, 0, n)


def test_a_batch_chunk_counts_as_paused_only_the_time_it_waited_for_the_lane():
    from runtime.executor import BatchGate, TorchDevice

    clock = _ReadHookClock()
    gate = BatchGate(clock)
    served, _ = served_mlp("b")
    assert served.segmented.num_units >= 3
    yields: list[float] = []
    opener: list[threading.Thread] = []

    def open_later() -> None:  # on another thread: the lane's job ends 3 ms later
        with gate._cond:  # held by the batch work until it waits
            clock.advance(0.003)
            gate.leave()

    def on_read() -> None:  # the batch work reads the clock where it starts to wait
        if gate.closed and not opener:
            opener.append(threading.Thread(target=open_later))
            opener[0].start()

    def unit_hook(unit: int) -> None:
        if unit == 0:  # a latency-critical job comes and goes within the unit
            gate.enter()
            clock.advance(0.008)
            gate.leave()
        elif unit == 1:  # one comes 1 ms before the unit ends, and runs on after it
            clock.advance(0.004)
            gate.enter()
            clock.advance(0.001)
            clock.hook = on_read

    served.segmented = _UnitHook(served.segmented, unit_hook)
    device = TorchDevice(lambda name: served, torch.device("cpu"), gate=gate,
                         on_yield=lambda job, delay: yields.append(delay))
    paused = device.run_chunk(_batch_job(served))
    opener[0].join(5)
    # the unit that ran through the first job did not pause; the second job held the
    # batch work at the next boundary for 3 ms after it had waited 1 ms for it
    assert paused == pytest.approx(0.003)
    assert yields == [pytest.approx(0.001)]
    assert not gate.closed


def test_row_shards_waiting_side_by_side_count_their_wait_once():
    from runtime.executor import BatchGate, TorchDevice
    from runtime.shards import ShardPool

    clock = _ReadHookClock()
    gate = BatchGate(clock)
    served, _ = served_mlp("b")
    pool = ShardPool(2, 2)
    reads: list[int] = []
    opener: list[threading.Thread] = []

    def open_later() -> None:
        with gate._cond:  # both shards wait on it by now
            clock.advance(0.003)
            gate.leave()

    def on_read() -> None:  # each shard reads the clock where it starts to wait
        if gate.closed:
            reads.append(1)
            if len(reads) == 2:
                opener.append(threading.Thread(target=open_later))
                opener[0].start()

    gate.enter()  # a latency-critical job runs as the batch chunk starts
    clock.hook = on_read
    chunk = _batch_job(served)
    chunk.job.payload.inputs["x"] = np.ones((4, 4), np.float32)
    chunk.job.batch_size = 4
    device = TorchDevice(lambda name: served, torch.device("cpu"), gate=gate, shards=pool)
    try:
        paused = device.run_chunk(chunk)
    finally:
        pool.stop()
    opener[0].join(5)
    assert len(reads) == 2  # two shards, each held 3 ms at the same time: 3 ms, not 6
    assert paused == pytest.approx(0.003)


def test_a_chunk_beside_an_idle_lane_reports_no_pause_and_a_latency_critical_one_none():
    from runtime.executor import BatchGate, TorchDevice

    gate = BatchGate(FakeClock())
    served, _ = served_mlp("b")
    device = TorchDevice(lambda name: served, torch.device("cpu"), gate=gate)
    assert device.run_chunk(_batch_job(served)) == 0.0
    chunk = _batch_job(served)
    chunk.job.priority = Priority.LATENCY_CRITICAL
    assert device.run_chunk(chunk) is None
    assert TorchDevice(lambda name: served, torch.device("cpu")).run_chunk(
        _batch_job(served)) is None


@pytest.mark.parametrize("calibrate", [True, False])
def test_batch_chunks_calibrate_the_profile_and_report_the_speed_ratio(calibrate):
    from runtime.engine import EngineOptions

    batch, _ = served_mlp("b")  # profiled at 0.1 ms a unit: whatever it measures here
    engine = make_engine([batch], options=EngineOptions(calibrate=calibrate))
    engine.start()

    async def go():
        for _ in range(12):
            await engine.infer("b", {"x": X})

    run(go())
    engine.stop(1.0)
    s = engine.scheduler
    gauge = engine.metrics.speed_ratio.labels("b")._value.get()
    if not calibrate:
        assert s.calibration is None and s.profiles["b"] is s.profiled["b"]
        assert gauge == 0.0  # never set
        return
    assert s.calibration is not None and s.calibration.chunks("b") == 12
    factor = s.speed_factor("b")
    assert gauge == factor == s.measured_speed("b") and 0.25 <= factor <= 4.0
    assert s.profiles["b"].units(1) == pytest.approx(
        [d * factor for d in s.profiled["b"].units(1)])


def test_an_unloaded_model_leaves_no_speed_or_sync_gauge_behind():
    batch, _ = served_mlp("b")
    engine = make_engine([batch])
    engine.start()

    async def go():
        for _ in range(16):
            await engine.infer("b", {"x": X})
        await engine.unload("b")

    run(go())
    ran = threading.Event()  # the executor runs its calls in order: the unload's came first
    engine.inbox.call(lambda _: ran.set())
    assert ran.wait(5)
    engine.stop(1.0)
    assert engine.scheduler.calibration is not None
    assert engine.scheduler.calibration.chunks("b") == 0  # forgotten with the model
    for gauge in (engine.metrics.speed_ratio, engine.metrics.sync_interval):
        assert ("b",) not in gauge._metrics


def test_an_unloaded_model_stays_known_only_where_the_repository_has_it():
    repo_model, _ = served_mlp("mlp")
    placed, _ = served_mlp("placed")  # served, but not in the repository (ModelMesh's kind)
    engine = make_engine([repo_model, placed], names=["mlp"])
    engine.start()

    async def go():
        await engine.unload("mlp")
        await engine.unload("placed")

    run(go())
    engine.stop(1.0)
    assert engine.model_ready("mlp") is False
    with pytest.raises(ModelNotReady):
        engine.model("mlp")
    with pytest.raises(ModelNotFound):
        engine.model_ready("placed")
    assert [m["name"] for m in engine.index()] == ["mlp"]


@pytest.mark.parametrize("content", [
    b"models:\n  mlp: {priority: batch}\n\xff\xfe",  # not UTF-8
    b"models:\n  mlp: {priority: latency-critical, slo_ms: 1" + b"0" * 400 + b"}\n",
    b"models:\n  mlp: {priority: latency-critical, slo_ms: .inf}\n",
    b"modles:\n  mlp: {priority: batch}\n",  # a misspelt key would empty the table
    b"models: []\n",
    b"models:\n  mlp:\n    priority:\n    - &a [x, x, x, x, x, x, x, x]\n"
    b"    - &b [*a, *a, *a, *a, *a, *a, *a, *a]\n    - &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    b"    - &d [*c, *c, *c, *c, *c, *c, *c, *c]\n    - [*d, *d, *d, *d, *d, *d, *d, *d]\n",
    None,  # a folder where the file should be
])
def test_a_bad_priority_file_is_reported_and_the_table_in_force_stays(tmp_path, caplog, content):
    import logging

    from scheduler.priority import ModelSettings, PriorityTable

    path = tmp_path / "priorities.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    applied: list[PriorityTable] = []
    watcher = PriorityFileWatcher(path, applied.append, period_s=3600)
    with caplog.at_level(logging.ERROR):
        watcher.start()  # at start-up too: the server starts on the models' own settings
        watcher.stop()
    assert applied == [] and watcher.errors == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("priority table not applied") and len(line) < 600
    assert not any(r.exc_info for r in caplog.records)
    if content is not None:
        path.write_text("models:\n  mlp: {priority: latency-critical, slo_ms: 20}\n")
        assert watcher.check()
        assert applied[-1].get("mlp") == ModelSettings(Priority.LATENCY_CRITICAL, 20.0)


def test_a_ready_model_has_its_counters_at_zero_before_anything_happens():
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=50)
    batch, _ = served_mlp("b")
    from prometheus_client import CollectorRegistry

    from runtime.metrics import Metrics

    registry = CollectorRegistry()
    engine = make_engine([lc, batch], metrics=Metrics(registry))
    sample = registry.get_sample_value
    assert sample("deft_slo_violations_total",
                  {"model": "lc", "priority": "latency-critical"}) == 0
    assert sample("deft_preemptions_total", {"model": "b", "priority": "batch"}) == 0
    assert sample("deft_requests_total",
                  {"model": "lc", "priority": "latency-critical", "outcome": "ok"}) == 0
    assert sample("deft_slo_violations_total", {"model": "b", "priority": "batch"}) is None
    engine.stop(1.0)


def test_a_started_job_withdrawn_while_paused_for_latency_critical_work_is_answered():
    """A client leaves while its batch job stands preempted: the job never runs again, so
    its request is answered (withdrawn) at once; nothing leaks into the queue bound."""
    from runtime.executor import ThreadInbox
    from tests.scheduler.factories import BATCH, LC, make_job, make_scheduler

    s = make_scheduler("layer", {"b": [1e-3] * 10, "lc": [1e-3]})  # a sync point per unit
    inbox = ThreadInbox()
    withdrawn = []
    inbox.on_cancelled = withdrawn.append
    batch = make_job("b", BATCH, arrival=0.0, units=10)
    inbox.submit(batch)
    inbox.drain(s, 0.0)
    _, d = s.decide(0.0)
    assert d.job is batch
    s.chunk_done(d, 0.0, 1e-3)
    inbox.submit(make_job("lc", LC, arrival=1e-3, units=1, slo=0.01))
    inbox.drain(s, 1e-3)
    _, d = s.decide(1e-3)
    assert d.job is not batch and batch.started and not batch.done  # paused
    inbox.cancel(batch)
    inbox.drain(s, 2e-3)
    assert withdrawn == [batch]
    s.chunk_done(d, 1e-3, 2e-3)
    _, d = s.decide(2e-3)
    assert not hasattr(d, "job")  # it never runs again: nothing left to run


def test_a_request_merged_into_a_running_job_is_answered_with_that_job_when_withdrawn():
    """Its rows are part of the running job, whose other requests still need the inputs
    (a retry after running out of memory starts pieces again from them)."""
    from runtime.executor import ThreadInbox
    from tests.scheduler.factories import BATCH, make_job, make_scheduler

    s = make_scheduler("layer", {"b": [1e-3] * 10}, batching=lambda model: 4)
    inbox = ThreadInbox()
    withdrawn = []
    inbox.on_cancelled = withdrawn.append
    first, second = (make_job("b", BATCH, arrival=0.0, units=10) for _ in range(2))
    inbox.submit(first)
    inbox.submit(second)
    inbox.drain(s, 0.0)
    _, d = s.decide(0.0)
    assert d.job.members == [first, second]
    s.chunk_done(d, 0.0, 1e-3)
    inbox.cancel(first)
    inbox.drain(s, 1e-3)
    assert withdrawn == []
    _, d = s.decide(1e-3)
    assert d.job.members == [first, second] and d.start == 1  # the job goes on


def test_a_request_withdrawn_from_a_merged_job_is_not_counted_as_an_slo_miss():
    from prometheus_client import CollectorRegistry

    from runtime.executor import Pending, ResultListener, _JobState
    from runtime.metrics import Metrics
    from scheduler.job import Job

    registry = CollectorRegistry()
    listener = ResultListener(Metrics(registry), FakeClock())
    loop = asyncio.new_event_loop()
    try:
        members = []
        for _ in range(2):
            pending = Pending("m", "batch", {}, loop.create_future(), loop, 0.0, slo_s=0.01)
            members.append(Job(model="m", priority=Priority.BATCH, batch_size=1, arrival=0.0,
                               num_units=1, payload=pending))
        members[0].cancelled = True  # its client went away while the job ran
        job = Job(model="m", priority=Priority.BATCH, batch_size=2, arrival=0.0, num_units=1,
                  members=members)
        job.device_state = _JobState([[]], [{"y": torch.zeros(2, 3)}])
        listener.on_complete(job, now=1.0)  # 1 s: far past the 10 ms SLO
    finally:
        loop.close()
    assert registry.get_sample_value(
        "deft_slo_violations_total", {"model": "m", "priority": "batch"}) == 1
