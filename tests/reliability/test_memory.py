"""What an answered request leaves behind: none of its tensors, whatever the policy, whether
it was answered, failed, timed out or withdrawn. (A finished job can stay referenced for a
while by the scheduler's queue indexes, which forget jobs lazily; its request's inputs and
answer must not stay with it.)"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import numpy as np
import pytest

from runtime.errors import InferenceFailed, RequestTimeout
from scheduler.clock import FakeClock
from scheduler.priority import Priority
from tests.reliability.support import faulty_mlp
from tests.runtime.helpers import make_engine, served_mlp

POLICIES = ["deft", "fifo", "priority", "layer", "fixed:2"]


def test_an_answered_request_keeps_none_of_its_tensors_whatever_the_policy():
    refs: dict[str, weakref.ref] = {}
    for policy in POLICIES:
        for klass in Priority:
            slo = 1000 if klass is Priority.LATENCY_CRITICAL else None
            model, _ = served_mlp("m", klass, slo_ms=slo)
            engine = make_engine([model], policy=policy)
            engine.start()

            async def go():
                x = np.ones((8, 4), np.float32)
                y = (await engine.infer("m", {"x": x}))["y"]  # noqa: B023 - awaited at once
                return weakref.ref(x), weakref.ref(y.base if y.base is not None else y)

            try:
                x_ref, y_ref = asyncio.run(go())
            finally:
                engine.stop(1.0)
            refs[f"{policy}/{klass.value} input"] = x_ref
            refs[f"{policy}/{klass.value} answer"] = y_ref
    gc.collect()
    assert [name for name, ref in refs.items() if ref() is not None] == []


def test_failed_timed_out_and_withdrawn_requests_keep_no_tensors(caplog):
    # a captured log record of the failure holds its traceback, and with it the failed
    # chunk's tensors, for as long as the test runs; a real log handler lets it go
    caplog.set_level(logging.ERROR, logger="scheduler.loop")
    bad, _, _ = faulty_mlp("bad", raises=RuntimeError("kaboom"))
    good, _ = served_mlp("good")
    clock = FakeClock()
    engine = make_engine([bad, good], policy="deft", clock=clock)
    refs: list[weakref.ref] = []

    async def go():
        def fresh() -> np.ndarray:
            x = np.ones((2, 4), np.float32)
            refs.append(weakref.ref(x))
            return x

        timed_out = asyncio.ensure_future(engine.infer("good", {"x": fresh()}, timeout_us=10))
        withdrawn = asyncio.ensure_future(engine.infer("good", {"x": fresh()}))
        await asyncio.sleep(0)
        withdrawn.cancel()
        clock.advance(1.0)
        engine.start()
        with pytest.raises(RequestTimeout):
            await timed_out
        with pytest.raises(asyncio.CancelledError):
            await withdrawn
        with pytest.raises(InferenceFailed):
            await engine.infer("bad", {"x": fresh()})
        for _ in range(200):
            if engine.outstanding == 0:
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(go())
    finally:
        engine.stop(1.0)
    gc.collect()
    assert len(refs) == 3 and all(ref() is None for ref in refs)
