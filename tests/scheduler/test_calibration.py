"""Calibration: policies plan with the profile scaled by the speed chunks measure at."""

from __future__ import annotations

import pytest

from scheduler.calibration import SpeedCalibration
from scheduler.clock import FakeClock
from scheduler.job import RunChunk
from scheduler.loop import ExecutorLoop
from scheduler.priority import ModelSettings
from scheduler.profile import Profile
from tests.scheduler.factories import BATCH, LC, make_job, make_scheduler


def test_the_factor_is_the_median_ratio_once_enough_chunks_ran():
    c = SpeedCalibration(min_samples=4)
    for measured in (2.0, 2.2, 1.8):
        assert not c.observe("m", 1.0, measured)
    assert c.factor("m") == 1.0  # three chunks are too few
    assert c.observe("m", 1.0, 9.0)  # one outlier does not move the median far
    assert c.factor("m") == pytest.approx(2.1)
    assert c.chunks("m") == 4 and c.factor("other") == 1.0


def test_small_moves_keep_the_factor_and_bounds_cap_it():
    c = SpeedCalibration(min_samples=2, window=4)
    for _ in range(2):
        c.observe("m", 1.0, 1.5)
    assert c.factor("m") == pytest.approx(1.5)
    for _ in range(4):
        c.observe("m", 1.0, 1.55)  # within 5% of the factor in use: kept
    assert c.factor("m") == pytest.approx(1.5)
    for _ in range(4):
        c.observe("m", 1.0, 100.0)
    assert c.factor("m") == 4.0
    for _ in range(4):
        c.observe("m", 1.0, 0.001)
    assert c.factor("m") == 0.25


def test_chunks_too_short_to_time_and_empty_measures_are_not_counted():
    c = SpeedCalibration(min_samples=1)
    assert not c.observe("m", 10e-6, 1.0)
    assert not c.observe("m", 1.0, 0.0)
    assert c.chunks("m") == 0
    c.observe("m", 1.0, 3.0)
    c.forget("m")
    assert c.factor("m") == 1.0


def _run_batch_job(s, arrival: float, unit_s: float, paused: float = 0.0) -> list[int]:
    """One batch job of model "b" on ``s``, every unit taking ``unit_s``; the chunks' ends."""
    b = make_job("b", BATCH, arrival=arrival, units=10)
    s.submit(b)
    t = arrival
    ends = []
    while not b.done:
        _, d = s.decide(t)
        took = (d.end - d.start) * unit_s + 0.1e-3 + paused
        s.chunk_done(d, t, t + took, paused)
        ends.append(d.end)
        t += took
    return ends


def test_deft_plans_a_device_running_slower_than_profiled_in_shorter_chunks():
    # lc: 1 ms solo, SLO 3.5 ms -> 2.4 ms of slack per batch chunk (incl. 0.1 ms sync);
    # profiled 1 ms units: 2 per chunk. The device runs them in 2 ms: as measured, only one
    # fits, and a chunk of two would hold a latency-critical request 4.1 ms.
    s = make_scheduler("deft", {"b": [1e-3] * 10, "lc": [1e-3]}, sync=0.1e-3, calibrate=True)
    s.submit(make_job("lc", LC, arrival=0.0, units=1, slo=3.5e-3))
    _, d = s.decide(0.0)
    s.chunk_done(d, 0.0, 1.1e-3)
    assert _run_batch_job(s, 1.1e-3, 2e-3) == [2, 4, 6, 8, 10]  # as profiled: too long
    assert s.speed_factor("b") == 1.0  # five chunks: not enough yet
    assert s.measured_speed("b") is None
    s.submit(make_job("lc", LC, arrival=0.1, units=1, slo=3.5e-3))
    _, d = s.decide(0.1)
    s.chunk_done(d, 0.1, 0.1011)
    ends = _run_batch_job(s, 0.1011, 2e-3)
    # two-unit chunks measure 4.1 ms where 2.1 ms was predicted: the units ran at 2 x
    # (the 0.1 ms sync point is a fixed cost)
    assert s.speed_factor("b") == pytest.approx(2.0)
    assert ends[-4:] == [7, 8, 9, 10]  # from the eighth chunk on: one unit per chunk
    assert s.profiled["b"].units(1) == (1e-3,) * 10  # as given; the scaled one is planned with
    assert s.profiles["b"].units(1) == pytest.approx((2e-3,) * 10)


def test_time_a_chunk_spent_paused_is_not_taken_for_slowness():
    s = make_scheduler("deft", {"b": [1e-3] * 10}, sync=0.1e-3, calibrate=True)
    for i in range(8):  # no latency-critical stream: each job runs as one chunk
        _run_batch_job(s, float(i), 1e-3, paused=5e-3)
    assert s.speed_factor("b") == 1.0 and s.calibration is not None
    assert s.calibration.chunks("b") >= 8


def test_a_new_profile_starts_over_and_the_same_one_keeps_what_was_measured():
    s = make_scheduler("fifo", {"b": [1e-3] * 10}, calibrate=True)
    for i in range(8):
        _run_batch_job(s, float(i), 3e-3)
    assert s.speed_factor("b") == pytest.approx(3.0, rel=0.01)
    s.set_model("b", ModelSettings(), Profile({1: (1e-3,) * 10}))  # settings change only
    assert s.speed_factor("b") == pytest.approx(3.0, rel=0.01)
    assert s.profiles["b"].units(1)[0] == pytest.approx(3e-3, rel=0.01)
    s.set_model("b", ModelSettings(), Profile({1: (2e-3,) * 10}))  # re-profiled
    assert s.speed_factor("b") == 1.0 and s.profiles["b"].units(1)[0] == 2e-3
    s.remove_model("b")
    assert "b" not in s.profiled and s.speed_factor("b") == 1.0


@pytest.mark.parametrize("launch,sync", [(8e-6, 20e-6), (15e-6, 0.0), (0.0, 0.1e-3)])
def test_the_speed_of_a_chunk_scales_its_units_and_not_the_fixed_costs(launch, sync):
    import random

    from scheduler.predictor import Predictor
    from scheduler.profile import DeviceCosts

    p = Predictor(DeviceCosts(launch, sync))
    rnd = random.Random(0)
    for _ in range(200):
        d = [rnd.choice((0.0, 2e-6, 60e-6, 1e-3)) * rnd.uniform(0.5, 2) for _ in range(12)]
        start = rnd.randrange(0, 11)
        end = rnd.randrange(start + 1, 13)
        f = rnd.uniform(0.3, 3.5)
        measured = p.chunk_time([x * f for x in d], start, end)
        ratio = p.speed_ratio(d, start, end, measured)
        if measured < sync + (end - start) * launch + 1e-12:  # launch-bound: not seen
            assert ratio is None or p.chunk_time(
                [x * ratio for x in d], start, end) == pytest.approx(measured)
            continue
        assert ratio == pytest.approx(f)
        assert p.chunk_time([x * ratio for x in d], start, end) == pytest.approx(measured)
    # a 60 us unit run 3 x slower on a GPU's costs: 3, where the whole chunk's ratio says 2.36
    cuda = Predictor(DeviceCosts(8e-6, 20e-6))
    measured = cuda.chunk_time([180e-6], 0, 1)
    assert cuda.speed_ratio([60e-6], 0, 1, measured) == pytest.approx(3.0)
    assert measured / cuda.chunk_time([60e-6], 0, 1) == pytest.approx(208 / 88)
    assert cuda.speed_ratio([60e-6], 0, 1, 25e-6) is None  # not even the fixed costs


def test_the_predictor_keeps_nothing_for_profiles_no_longer_planned_with():
    s = make_scheduler("deft", {"b": [1e-3] * 10}, calibrate=True)
    for i in range(64):  # the speed swings: a new factor (and scaled profile) every 8 jobs
        _run_batch_job(s, float(i), (1e-3, 2e-3)[(i // 8) % 2])
    assert s.calibration is not None and s.calibration.chunks("b") == 64
    held = {id(profile) for profile, _ in s.predictor._flat.values()}
    assert held <= {id(s.profiles["b"]), id(s.profiled["b"])}
    s.remove_model("b")
    assert not s.predictor._flat


def test_time_paused_for_the_lane_is_not_charged_as_device_time():
    s = make_scheduler("fifo", {"b": [1e-3] * 10})
    b = make_job("b", BATCH, arrival=0.0, units=10)
    s.submit(b)
    _, d = s.decide(0.0)
    s.chunk_done(d, 0.0, 0.015, paused=0.005)
    assert b.device_time == pytest.approx(0.010)


def test_without_calibration_the_profiles_stay_as_given():
    s = make_scheduler("deft", {"b": [1e-3] * 10})
    for i in range(8):
        _run_batch_job(s, float(i), 3e-3)
    assert s.calibration is None and s.speed_factor("b") == 1.0
    assert s.measured_speed("b") is None and s.profiles["b"] is s.profiled["b"]


class _SlowDevice:
    """Every chunk takes 3 s of clock time, 2 s of which it waited (paused)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def run_chunk(self, chunk: RunChunk) -> float:
        self.clock.advance(3.0)
        return 2.0


class _Inbox:
    def __init__(self, jobs) -> None:
        self.jobs = list(jobs)

    def drain(self, scheduler, now: float) -> None:
        for job in self.jobs:
            scheduler.submit(job)
        self.jobs = []

    def wait(self, until) -> bool:
        return False


class _Quiet:
    def on_chunk(self, done, chunk) -> None: ...
    def on_complete(self, job, now) -> None: ...
    def on_reject(self, reject, now) -> None: ...
    def on_fail(self, job, error, now) -> None: ...


def test_the_loop_hands_the_device_s_paused_time_to_the_scheduler():
    clock = FakeClock()
    s = make_scheduler("fifo", {"b": [0.25] * 4}, calibrate=True)
    jobs = [make_job("b", BATCH, units=4) for _ in range(8)]
    ExecutorLoop(s, _SlowDevice(clock), _Inbox(jobs), _Quiet(), clock).run()
    assert all(j.done for j in jobs)
    assert s.speed_factor("b") == 1.0  # 3 s a job, 2 of them paused: 1 s as profiled


def test_a_job_whose_model_was_loaded_anew_with_fewer_units_runs_to_its_end():
    """A reload swaps the model's profile while a job of the version before runs: the job
    keeps its own units, planned without a profile that no longer describes them."""
    s = make_scheduler("deft", {"b": [1e-3] * 10, "lc": [1e-3]}, sync=0.1e-3, calibrate=True)
    s.submit(make_job("lc", LC, arrival=0.0, units=1, slo=3.5e-3))
    _, d = s.decide(0.0)
    s.chunk_done(d, 0.0, 1.1e-3)
    b = make_job("b", BATCH, arrival=1.1e-3, units=10)
    s.submit(b)
    t = 1.1e-3
    _, d = s.decide(t)
    s.chunk_done(d, t, t + 2.1e-3)
    t += 2.1e-3
    s.set_model("b", ModelSettings(), Profile({1: (5e-3,) * 3}))
    ends = [d.end]
    while not b.done:
        _, d = s.decide(t)
        s.chunk_done(d, t, t + 1e-3)
        ends.append(d.end)
        t += 1e-3
    assert ends[-1] == 10 and ends == sorted(ends)
    new = make_job("b", BATCH, arrival=t, units=3)
    s.submit(new)
    _, d = s.decide(t)
    assert d.job is new and d.end <= 3
