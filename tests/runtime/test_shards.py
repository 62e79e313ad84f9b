"""Row shards: a batch job's rows on worker threads side by side (runtime/shards.py)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import numpy as np
import pytest
import torch

from runtime.engine import EngineOptions
from runtime.shards import ShardPool, shard_sizes
from scheduler.priority import Priority
from tests.runtime.helpers import make_engine, served_mlp


@pytest.mark.parametrize(("rows", "workers", "sizes"), [
    (8, 2, [4, 4]),
    (5, 2, [3, 2]),
    (3, 2, [3]),  # 2 + 1 would take 2 row-times against 1.5 on the whole team
    (1, 2, [1]),
    (8, 1, [8]),
    (8, 16, [1] * 8),
    (7, 4, [2, 2, 2, 1]),
    (6, 4, [6]),
])
def test_shard_sizes(rows, workers, sizes):
    assert shard_sizes(rows, workers) == sizes
    assert sum(sizes) == rows


def test_the_pool_runs_each_task_on_its_own_worker_with_its_share_of_the_threads():
    pool = ShardPool(2, threads=4)
    try:
        seen = pool.run([lambda: (threading.current_thread().name, torch.get_num_threads()),
                         lambda: (threading.current_thread().name, torch.get_num_threads())])
        assert seen == [("deft-batch-shard-0", 2), ("deft-batch-shard-1", 2)]
        # more tasks than workers: they queue on the workers in turn
        names = pool.run([lambda: threading.current_thread().name for _ in range(5)])
        assert names == [f"deft-batch-shard-{i % 2}" for i in range(5)]
    finally:
        pool.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("deft-batch-shard")]


def test_the_first_error_is_raised_once_every_task_has_ended():
    pool = ShardPool(2, threads=2)
    failed = threading.Event()
    finished = []

    def fails() -> None:
        failed.set()
        raise ValueError("shard 0 broke")

    def slower() -> None:
        failed.wait(10.0)  # ends after the other task has raised
        finished.append(True)

    try:
        with pytest.raises(ValueError, match="shard 0 broke"):
            pool.run([fails, slower])
        assert finished == [True]
        assert pool.run([lambda: 1, lambda: 2]) == [1, 2]  # and the pool still works
    finally:
        pool.stop()


def test_a_pool_needs_two_workers():
    with pytest.raises(ValueError):
        ShardPool(1, threads=2)


class Recording:
    """A segmented model look-alike that records, per unit run, its thread and rows."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    @property
    def num_units(self) -> int:
        return int(self.inner.num_units)

    def start(self, inputs: dict[str, torch.Tensor]) -> Any:
        return (self.inner.start(inputs), int(next(iter(inputs.values())).shape[0]))

    def run(self, state: Any, start: int, end: int) -> Any:
        inner, rows = state
        with self.lock:
            self.seen += [(threading.current_thread().name, rows)] * (end - start)
        return (self.inner.run(inner, start, end), rows)

    def finish(self, state: Any) -> dict[str, torch.Tensor]:
        return self.inner.finish(state[0])


def _infer(engine, model: str, x: np.ndarray) -> np.ndarray:
    async def go():
        return await engine.infer(model, {"x": x})

    return asyncio.run(go())["y"]


def _reference(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_a_batch_job_runs_as_row_shards_beside_the_lane_and_answers_as_the_whole_model():
    model, module = served_mlp(max_batch_size=8)
    rec = Recording(model.segmented)
    model.segmented = rec
    lc, lc_module = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    lc_rec = Recording(lc.segmented)
    lc.segmented = lc_rec
    engine = make_engine([model, lc], options=EngineOptions(batch_threads=2))
    assert engine.shards is not None and engine.shards.workers == 2
    yields: list[str] = []
    inner_pause = engine.gate.pause_if_closed

    def pause_if_closed():
        yields.append(threading.current_thread().name)
        return inner_pause()

    engine.gate.pause_if_closed = pause_if_closed
    engine.start()
    try:
        x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
        np.testing.assert_allclose(_infer(engine, "mlp", x), _reference(module, x), rtol=1e-5)
        units = model.segmented.num_units
        assert sorted(rec.seen) == sorted(
            [("deft-batch-shard-0", 4)] * units + [("deft-batch-shard-1", 4)] * units)
        if hasattr(os, "SCHED_IDLE"):  # the shards run at the batch executor's priority
            for t in engine.shards._threads:
                assert os.sched_getscheduler(t.native_id) == os.SCHED_IDLE
        # each shard checks the lane before each of its units
        assert sorted(yields) == sorted(
            ["deft-batch-shard-0"] * units + ["deft-batch-shard-1"] * units)
        # latency-critical jobs run whole on the lane
        np.testing.assert_allclose(_infer(engine, "lc", x), _reference(lc_module, x),
                                   rtol=1e-5)
        assert {name for name, _ in lc_rec.seen} == {"deft-latency-lane"}
        assert {rows for _, rows in lc_rec.seen} == {8}
        # a single row is not split: it runs on the batch executor's own team
        rec.seen.clear()
        np.testing.assert_allclose(_infer(engine, "mlp", x[:1]), _reference(module, x[:1]),
                                   rtol=1e-5)
        assert {name for name, _ in rec.seen} == {"deft-executor"}
    finally:
        engine.stop(1.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("deft-batch-shard")]


class FailsOnShards(Recording):
    """Raises in any unit run on 4 rows (a shard of a batch of 8)."""

    def run(self, state: Any, start: int, end: int) -> Any:
        if state[1] == 4:
            raise ValueError("this model cannot run on 4 rows")
        return super().run(state, start, end)


def test_a_shard_that_raises_fails_its_job_and_the_engine_keeps_serving():
    from runtime.errors import InferenceFailed

    model, module = served_mlp(max_batch_size=8)
    model.segmented = FailsOnShards(model.segmented)
    engine = make_engine([model], options=EngineOptions(batch_threads=2))
    engine.start()
    try:
        x = np.ones((8, 4), dtype=np.float32)
        with pytest.raises(InferenceFailed, match="cannot run on 4 rows"):
            _infer(engine, "mlp", x)
        # a single row is not split, so it runs; and the executor is still alive
        np.testing.assert_allclose(_infer(engine, "mlp", x[:1]), _reference(module, x[:1]),
                                   rtol=1e-5)
        assert engine.outstanding == 0
    finally:
        engine.stop(1.0)


def test_shards_are_off_with_one_shard_and_without_the_lane():
    model, _ = served_mlp()
    assert make_engine([model], options=EngineOptions(batch_shards=1)).shards is None
    assert make_engine([model], options=EngineOptions(cpu_lane=False)).shards is None
    assert make_engine([model], policy="fifo").shards is None
    assert make_engine([model], options=EngineOptions(batch_shards=3)).shards.workers == 3
