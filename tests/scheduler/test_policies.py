"""Policies driven with literal times: exact decision sequences."""

from __future__ import annotations

import math

import pytest

from scheduler.job import RunChunk, Wait
from scheduler.policies import validate_policy_name
from scheduler.priority import InvalidSettings
from tests.scheduler.factories import BATCH, LC, make_job, make_scheduler, run_to_completion


def step(s, now):
    rejects, d = s.decide(now)
    return rejects, d


def test_latency_critical_runs_right_after_the_current_chunk_and_batch_resumes():
    s = make_scheduler("fixed:2")
    b = make_job("b", BATCH, arrival=0.0, units=6)
    s.submit(b)
    _, d = step(s, 0.0)
    assert (d.job, d.start, d.end) == (b, 0, 2)
    lc = make_job("lc", LC, arrival=0.5, units=3)
    s.submit(lc)  # arrives mid-chunk
    s.chunk_done(d, 0.0, 1.0)
    _, d2 = step(s, 1.0)
    assert (d2.job, d2.start, d2.end, d2.preempted) == (lc, 0, 3, b)
    s.chunk_done(d2, 1.0, 2.0)
    assert lc.done and lc.finished_at == 2.0
    assert lc.preemption_delay == pytest.approx(0.5)
    _, d3 = step(s, 2.0)
    assert (d3.job, d3.start, d3.end) == (b, 2, 4)  # resumes where it stopped
    s.chunk_done(d3, 2.0, 3.0)
    _, d4 = step(s, 3.0)
    assert (d4.job, d4.start, d4.end) == (b, 4, 6)
    s.chunk_done(d4, 3.0, 4.0)
    assert b.done and b.preemptions == 1
    assert isinstance(step(s, 4.0)[1], Wait)


@pytest.mark.parametrize("policy", ["layer", "fixed:3", "deft"])
def test_latency_critical_jobs_are_never_preempted_and_run_as_one_chunk(policy):
    s = make_scheduler(policy, {"lc": [1, 1, 1, 1], "lc2": [1, 1, 1, 1], "b": [1, 1, 1, 1]})
    first = make_job("lc", LC, arrival=0.0, units=4, slo=10)
    s.submit(first)
    _, d = step(s, 0.0)
    assert (d.job, d.start, d.end) == (first, 0, 4)
    # an earlier-deadline latency-critical job and a batch job arrive while it runs
    urgent = make_job("lc2", LC, arrival=0.1, units=4, slo=1)
    s.submit(urgent)
    s.submit(make_job("b", BATCH, arrival=0.1))
    s.chunk_done(d, 0.0, 4.0)
    assert first.done and first.preemptions == 0
    _, d2 = step(s, 4.0)
    assert (d2.job, d2.start, d2.end, d2.preempted) == (urgent, 0, 4, None)


def test_earliest_deadline_first_among_latency_critical_jobs():
    s = make_scheduler("layer")
    late = make_job("a", LC, arrival=0.0, slo=5.0, units=1)
    early = make_job("c", LC, arrival=0.2, slo=1.0, units=1)
    s.submit(late)
    s.submit(early)
    order = run_to_completion(s, start=0.3)
    assert [o[0] for o in order] == [early.id, late.id]


def test_a_job_whose_timeout_passed_while_queued_is_rejected_not_run():
    s = make_scheduler("fifo")
    long = make_job("b", BATCH, arrival=0.0, units=1)
    waiting = make_job("b", BATCH, arrival=0.1, units=1, timeout=0.5)
    s.submit(long)
    s.submit(waiting)
    _, d = step(s, 0.0)
    assert d.job is long
    s.chunk_done(d, 0.0, 2.0)
    rejects, d2 = step(s, 2.0)
    assert [r.job for r in rejects] == [waiting]
    assert isinstance(d2, Wait)
    assert not waiting.started


def test_fifo_runs_in_arrival_order_without_sync_points():
    s = make_scheduler("fifo")
    jobs = [
        make_job("b", BATCH, 0.0, units=5),
        make_job("lc", LC, 0.1, units=2),
        make_job("c", BATCH, 0.2, units=3),
    ]
    for j in jobs:
        s.submit(j)
    assert run_to_completion(s) == [(jobs[0].id, 0, 5), (jobs[1].id, 0, 2), (jobs[2].id, 0, 3)]


def test_priority_reorders_the_queue_but_never_interrupts():
    s = make_scheduler("priority")
    b1 = make_job("b", BATCH, 0.0, units=5)
    s.submit(b1)
    _, d = step(s, 0.0)
    assert (d.job, d.end) == (b1, 5)
    b2 = make_job("b", BATCH, 0.1, units=2)
    lc = make_job("lc", LC, 0.2, units=2)
    s.submit(b2)
    s.submit(lc)
    s.chunk_done(d, 0.0, 1.0)
    assert run_to_completion(s, 1.0) == [(lc.id, 0, 2), (b2.id, 0, 2)]


def test_batch_models_share_the_device_by_time_not_by_job_count():
    s = make_scheduler("layer")
    # model "long" has 4-unit jobs, model "short" 1-unit jobs; every unit takes 1 s
    for i in range(20):
        s.submit(make_job("long", BATCH, arrival=i * 1e-3, units=4))
        s.submit(make_job("short", BATCH, arrival=i * 1e-3, units=1))
    t = 0.0
    time_by_model = {"long": 0.0, "short": 0.0}
    while t < 40:
        _, d = s.decide(t)
        s.chunk_done(d, t, t + 1.0)
        time_by_model[d.job.model] += 1.0
        t += 1.0
    assert abs(time_by_model["long"] - time_by_model["short"]) <= 4.0


def _closed_loop_share(policy: str, rtt: float = 0.005) -> dict[str, float]:
    """Two batch models with one closed-loop client each (the next request arrives ``rtt``
    after the last answer); "slow" jobs take 10 units of 10 ms, "fast" ones 2. Returns each
    model's share of the device over 5 simulated seconds."""
    s = make_scheduler(policy, {"slow": [0.01] * 10, "fast": [0.01] * 2})
    s.submit(make_job("slow", BATCH, arrival=0.0, units=10))
    s.submit(make_job("fast", BATCH, arrival=0.0, units=2))
    pending: list[tuple[float, str, int]] = []
    used = {"slow": 0.0, "fast": 0.0}
    t = 0.0
    while t < 5.0:
        for arrival, model, units in [p for p in pending if p[0] <= t]:
            pending.remove((arrival, model, units))
            s.submit(make_job(model, BATCH, arrival=arrival, units=units))
        _, d = s.decide(t)
        if isinstance(d, Wait):
            t = min(p[0] for p in pending)
            continue
        assert isinstance(d, RunChunk)
        took = 0.01 * (d.end - d.start)
        s.chunk_done(d, t, t + took)
        used[d.job.model] += took
        t += took
        if d.job.done:
            pending.append((t + rtt, d.job.model, d.job.num_units))
    total = sum(used.values())
    return {m: u / total for m, u in used.items()}


@pytest.mark.parametrize("policy", ["deft", "layer", "fixed:4"])
def test_batch_models_with_one_job_at_a_time_each_still_share_the_device_by_time(policy):
    # each model has at most one job queued, and the next arrives only after the last is
    # answered: job after job, the slow model would get 5/6 of the device
    share = _closed_loop_share(policy)
    assert share["fast"] == pytest.approx(0.5, abs=0.06), share


def test_non_preemptive_policies_run_batch_jobs_job_by_job():
    share = _closed_loop_share("fifo")
    assert share["slow"] == pytest.approx(10 / 12, abs=0.03), share


def test_a_batch_job_is_sliced_only_while_another_batch_model_is_active():
    s = make_scheduler("deft", {"a": [0.01] * 10, "b": [0.01] * 2}, batch_slice_s=0.02)
    s.submit(make_job("a", BATCH, arrival=0.0, units=10))
    _, d = s.decide(0.0)
    assert isinstance(d, RunChunk) and (d.start, d.end) == (0, 10)  # alone: the whole job
    s.chunk_done(d, 0.0, 0.1)
    s.submit(make_job("b", BATCH, arrival=0.1, units=2))
    s.submit(make_job("a", BATCH, arrival=0.1, units=10))
    _, d = s.decide(0.1)
    # "b" was idle: it comes back one slice behind "a", not 0.1 s behind
    assert d.job.model == "b"
    s.chunk_done(d, 0.1, 0.12)
    _, d = s.decide(0.12)
    assert d.job.model == "a" and (d.start, d.end) == (0, 2)  # b is active: 20 ms slices
    s.chunk_done(d, 0.12, 0.14)
    assert s.queue.vtime("b") == pytest.approx(0.1 - 0.02 + 0.02)
    # two seconds later nothing of "b" has been seen for over the active window
    s.chunk_done(s.decide(2.0)[1], 2.0, 2.08)  # type: ignore[arg-type]
    assert s.current is None and not s.queue


def test_a_model_that_was_idle_does_not_bank_device_time():
    s = make_scheduler("layer", {"a": [1.0] * 4, "b": [1.0] * 4}, batch_slice_s=0.5)
    t = 0.0
    for _ in range(3):  # "a" alone uses 12 s while "b" is idle
        s.submit(make_job("a", BATCH, arrival=t, units=4))
        t += len(run_to_completion(s, start=t))
    s.submit(make_job("a", BATCH, arrival=t, units=4))
    s.submit(make_job("b", BATCH, arrival=t, units=4))
    models = []
    while True:
        _, d = s.decide(t)
        if isinstance(d, Wait):
            break
        s.chunk_done(d, t, t + 1.0)
        models.append(d.job.model)
        t += 1.0
    # "b" comes back half a second (its credit) behind "a", not 12 s behind (which would
    # shut "a" out for 12 s), and the two take turns
    assert "".join(models) == "babababa"


def test_cancelled_queued_job_never_runs():
    s = make_scheduler("fifo")
    a = make_job("b", BATCH, 0.0, units=1)
    gone = make_job("b", BATCH, 0.1, units=1)
    s.submit(a)
    s.submit(gone)
    assert s.cancel(gone)
    assert [o[0] for o in run_to_completion(s)] == [a.id]


def test_dynamic_batching_merges_queued_jobs_of_one_model():
    s = make_scheduler("fifo", batching=lambda model: 4 if model == "b" else None)
    jobs = [make_job("b", BATCH, 0.01 * i, units=2) for i in range(6)]
    for j in jobs:
        s.submit(j)
    _, d = s.decide(0.1)
    assert d.job.batch_size == 4 and d.job.members == jobs[:4]
    s.chunk_done(d, 0.1, 0.2)
    _, d2 = s.decide(0.2)
    assert d2.job.members == jobs[4:]


def test_deft_uses_no_sync_points_without_active_latency_critical_streams():
    s = make_scheduler("deft", {"b": [1e-3] * 10}, launch=5e-6, sync=20e-6)
    b = make_job("b", BATCH, 0.0, units=10)
    s.submit(b)
    _, d = s.decide(0.0)
    assert (d.start, d.end) == (0, 10)


def _run_one_latency_critical_job(s, slo: float, took: float) -> None:
    """One job of stream "lc" from 0 to ``took``: the stream is active from then on."""
    s.submit(make_job("lc", LC, arrival=0.0, units=1, slo=slo))
    _, d = s.decide(0.0)
    s.chunk_done(d, 0.0, took)


def test_deft_packs_chunks_up_to_the_latency_critical_slack():
    # lc: 1 ms solo; SLO 3.5 ms -> slack 2.5 ms per batch chunk (incl. sync)
    s = make_scheduler("deft", {"b": [1e-3] * 10, "lc": [1e-3]}, sync=0.1e-3)
    _run_one_latency_critical_job(s, slo=3.5e-3, took=1.1e-3)
    b = make_job("b", BATCH, arrival=1.1e-3, units=10)
    s.submit(b)
    ends = []
    t = 1.1e-3
    while not b.done:
        _, d = s.decide(t)
        ends.append(d.end)
        s.chunk_done(d, t, t + 1e-3)
        t += 1e-3
    assert ends == [2, 4, 6, 8, 10]  # 2 units + sync = 2.1 ms <= 2.5 ms; 3 units would not fit


def test_deft_keeps_the_server_time_it_is_told_of_free_of_batch_work():
    # the stream and slack above, and requests that spend 1.2 ms in the server outside the
    # device (reading, decoding, hand-offs): 3.5 - 1.1 (solo) - 1.2 leaves 1.2 ms per chunk
    s = make_scheduler("deft", {"b": [1e-3] * 10, "lc": [1e-3]}, sync=0.1e-3)
    _run_one_latency_critical_job(s, slo=3.5e-3, took=1.1e-3)
    for _ in range(s.streams.min_samples - 1):
        s.streams.on_host_time("lc", 1.2e-3)
    assert s.streams.budget(1.1e-3) == pytest.approx(2.4e-3)  # too few reports: as before
    s.streams.on_host_time("lc", 1.2e-3)
    assert s.streams.budget(1.1e-3) == pytest.approx(1.2e-3)
    b = make_job("b", BATCH, arrival=1.1e-3, units=10)
    s.submit(b)
    _, d = s.decide(1.1e-3)
    assert (d.start, d.end) == (0, 1)  # 1 unit + sync = 1.1 ms <= 1.2 ms; 2 would not fit
    # a new SLO for the stream keeps what was measured of it
    s.submit(make_job("lc", LC, arrival=2e-3, units=1, slo=5e-3))
    assert s.streams.budget(2e-3) == pytest.approx(5e-3 - 1.1e-3 - 1.2e-3)
    s.streams.on_host_time("nobody", 1.0)  # a model that is no stream: ignored


def test_deft_follows_what_it_learns_of_the_stream_while_a_batch_job_runs():
    # the stream and slack above; the batch job starts before any server time is reported
    s = make_scheduler("deft", {"b": [1e-3] * 10, "lc": [1e-3]}, sync=0.1e-3)
    _run_one_latency_critical_job(s, slo=3.5e-3, took=1.1e-3)
    b = make_job("b", BATCH, arrival=1.1e-3, units=10)
    s.submit(b)
    _, d = s.decide(1.1e-3)
    assert (d.start, d.end) == (0, 2)  # 2.4 ms of slack: two units per chunk
    s.chunk_done(d, 1.1e-3, 3.1e-3)
    # mid-job, the server reports 1.2 ms outside the device per request: 1.2 ms of slack
    for _ in range(s.streams.min_samples):
        s.streams.on_host_time("lc", 1.2e-3)
    _, d = s.decide(3.1e-3)
    assert (d.start, d.end) == (2, 3)
    s.chunk_done(d, 3.1e-3, 4.1e-3)
    # the stream falls quiet (no arrival for longer than the active window): whole
    quiet = 1.1e-3 + s.streams.active_window_s + 1e-3
    _, d = s.decide(quiet)
    assert (d.start, d.end) == (3, 10)


def test_deft_runs_batch_jobs_whole_where_latency_critical_jobs_never_wait_for_them():
    # the same stream and slack as above, but latency-critical jobs run beside batch work
    # (the CPU lane, which yields at every unit boundary): chunks would only cost time
    s = make_scheduler("deft", {"b": [1e-3] * 10, "lc": [1e-3]}, sync=0.1e-3,
                       split_batches=False)
    _run_one_latency_critical_job(s, slo=3.5e-3, took=1.1e-3)
    b = make_job("b", BATCH, arrival=1.1e-3, units=10, batch_size=8)
    s.submit(b)
    _, d = s.decide(1.1e-3)
    assert (d.start, d.end) == (0, 10) and b.micro_batches == 1


def test_deft_splits_a_batch_into_micro_batches_when_a_unit_exceeds_the_slack():
    s = make_scheduler("deft", {"lc": [1e-3]})
    from scheduler.priority import ModelSettings
    from scheduler.profile import Profile

    s.set_model("b", ModelSettings(), Profile({1: (1e-3, 1e-3), 8: (8e-3, 8e-3)}))
    _run_one_latency_critical_job(s, slo=4e-3, took=1e-3)
    b = make_job("b", BATCH, arrival=1e-3, units=2, batch_size=8)
    s.submit(b)
    _, d = s.decide(1e-3)
    assert b.micro_batches == 4  # units of 2 samples take 2 ms <= 3 ms of slack
    assert b.total_units == 8 and b.micro_batch_sizes() == [2, 2, 2, 2]


@pytest.mark.parametrize("name", ["fifo", "priority", "layer", "fixed:1", "fixed:16", "deft"])
def test_policy_names(name):
    validate_policy_name(name)


@pytest.mark.parametrize("name", ["", "edf", "fixed:", "fixed:0", "fixed:x", "fixed:-2"])
def test_bad_policy_names(name):
    with pytest.raises(InvalidSettings):
        validate_policy_name(name)


def test_streams_budget_is_infinite_when_inactive():
    s = make_scheduler("deft")
    assert math.isinf(s.streams.budget(0.0))
    assert isinstance(s.decide(0.0)[1], Wait)
    assert not isinstance(s.decide(0.0)[1], RunChunk)


def test_a_batch_job_waits_up_to_its_queue_delay_for_more_requests():
    s = make_scheduler("fifo", batching=lambda m: 4)
    s._batch_delay = lambda model: 0.002
    first = make_job("b", BATCH, arrival=0.0, units=1)
    s.submit(first)
    _, d = s.decide(0.0)
    assert d == Wait(until=0.002)
    second = make_job("b", BATCH, arrival=0.001, units=1)
    s.submit(second)
    assert s.decide(0.001)[1] == Wait(until=0.002)
    _, d = s.decide(0.002)
    assert d.job.members == [first, second]


def test_a_started_batch_job_runs_while_the_model_it_yields_to_waits_for_more_requests():
    s = make_scheduler("deft", {"a": [0.01] * 10, "b": [0.005] * 2}, batching=lambda m: 4,
                       batch_delay=lambda m: 0.005 if m == "b" else 0.0)
    s.submit(make_job("a", BATCH, arrival=0.0, units=10))
    s.submit(make_job("b", BATCH, arrival=0.0, units=2))
    _, d = s.decide(0.0)  # a tie: "a" first, for one 20 ms slice ("b" is active)
    assert (d.job.model, d.start, d.end) == ("a", 0, 2)
    s.chunk_done(d, 0.0, 0.02)
    _, d = s.decide(0.02)
    assert d.job.model == "b"
    s.chunk_done(d, 0.02, 0.03)  # "b" done: it has used 10 ms, "a" 20 ms
    s.submit(make_job("b", BATCH, arrival=0.03, units=2))  # alone in a batch of up to 4
    _, d = s.decide(0.031)
    # "b" is first by device time but waits until 0.035 for more requests: "a" goes on
    assert isinstance(d, RunChunk) and (d.job.model, d.start) == ("a", 2)
    s.chunk_done(d, 0.031, 0.051)
    _, d = s.decide(0.051)
    assert isinstance(d, RunChunk) and d.job.model == "b" and d.preempted is not None
    s.chunk_done(d, 0.051, 0.061)
    rest = run_to_completion(s, start=0.061, chunk_time=0.02)
    assert sum(end - start for _, start, end in rest) == 6  # "a" finishes; nothing else ran
    assert s.current is None and not s.policy.paused  # type: ignore[attr-defined]


def test_a_dropped_job_leaves_no_trace_in_the_fair_share():
    s = make_scheduler("deft", {"a": [0.01] * 10})
    s.submit(make_job("a", BATCH, arrival=0.0, units=10))
    _, d = s.decide(0.0)
    assert s.queue.busy_batch_models() == {"a"}
    assert s.drop_current() is d.job and d.job.cancelled
    assert s.current is None and s.queue.busy_batch_models() == set()
    assert s.drop_current() is None


def test_a_full_batch_does_not_wait():
    s = make_scheduler("fifo", batching=lambda m: 2)
    s._batch_delay = lambda model: 1.0
    jobs = [make_job("b", BATCH, arrival=0.0, units=1) for _ in range(2)]
    for j in jobs:
        s.submit(j)
    _, d = s.decide(0.0)
    assert isinstance(d, RunChunk) and d.job.members == jobs


def test_the_queue_does_not_keep_finished_jobs():
    s = make_scheduler("deft")
    for i in range(1000):
        s.submit(make_job("b", BATCH, arrival=float(i), units=1))
        _, d = s.decide(float(i))
        s.chunk_done(d, float(i), float(i) + 0.5)
    q = s.queue
    held = len(q._by_arrival) + len(q._by_rank) + sum(len(h) for h in q._batch.values())
    assert held <= 3 * 65
