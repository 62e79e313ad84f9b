"""The simulator's lane mode: the runtime's CPU lane (latency-critical jobs on a thread of
their own at solo speed; batch work pauses at every unit boundary while one is active)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from scheduler.sim.__main__ import main
from scheduler.sim.engine import merge_intervals, simulate
from scheduler.sim.report import SoloBaselines, summarize
from scheduler.sim.workload import WorkloadError, parse_workload

MS = 1e-3

# One latency-critical stream (a 1.5 ms unit every 5 ms) beside one closed-loop batch client
# (4 units of 2 ms), no launch or sync costs: every figure below is computed by hand.
TINY = {
    "name": "tiny",
    "duration_s": 0.038,
    "seed": 1,
    "models": {"lc": {"profile": {"1": [1500]}}, "b": {"profile": {"1": [2000] * 4}}},
    "streams": [
        {
            "model": "lc",
            "priority": "latency-critical",
            "slo_ms": 10,
            "arrival": {"type": "periodic", "rate_per_s": 200},
        },
        {"model": "b", "priority": "batch", "arrival": {"type": "closed", "clients": 1}},
    ],
}

# Contention: a Poisson latency-critical stream and two batch streams with long units.
MIX = {
    "name": "mix",
    "duration_s": 1.5,
    "seed": 3,
    "device": {"launch_overhead_us": 5, "sync_overhead_us": 20},
    "models": {
        "det": {"profile": {"1": [300, 250, 400]}},
        "big": {"profile": {"1": [900] * 8, "8": [3000] * 8}},
    },
    "streams": [
        {
            "model": "det",
            "priority": "latency-critical",
            "slo_ms": 6,
            "arrival": {"type": "poisson", "rate_per_s": 150},
        },
        {
            "model": "big",
            "priority": "batch",
            "batch_size": 8,
            "arrival": {"type": "closed", "clients": 2},
        },
        {
            "model": "big",
            "priority": "batch",
            "arrival": {"type": "poisson", "rate_per_s": 20},
        },
    ],
}

PREEMPTIVE = ["deft", "layer", "fixed:4"]


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


@pytest.mark.parametrize("policy", ["deft", "layer"])
def test_lane_latencies_are_the_stream_alone(policy):
    w = parse_workload(MIX)
    lane = simulate(w, policy, cpu_lane=True)
    alone = simulate(w.only(0), policy)
    assert lane.cpu_lane and lane.records[0].latencies == alone.records[0].latencies
    assert lane.records[0].arrived > 100
    # beside the same batch load on one device queue, they wait for batch work
    shared = simulate(w, policy)
    assert max(shared.records[0].latencies) > max(lane.records[0].latencies)
    # and they never wait for batch work on the lane
    assert set(lane.records[0].preemption_delays) == {0.0}
    assert summarize(lane, SoloBaselines(w))["preemption_delay_ms"]["p99"] == 0.0


def test_two_latency_critical_streams_share_the_lane():
    doc = json.loads(json.dumps(MIX))
    doc["streams"].insert(
        1,
        {
            "model": "det",
            "priority": "latency-critical",
            "slo_ms": 4,
            "arrival": {"type": "periodic", "rate_per_s": 90},
        },
    )
    w = parse_workload(doc)
    lane = simulate(w, "deft", cpu_lane=True)
    lc_only = simulate(dataclasses.replace(w, streams=w.streams[:2]), "deft")
    for i in (0, 1):
        assert lane.records[i].latencies == lc_only.records[i].latencies
    assert lane.lost == 0


@pytest.mark.parametrize("policy", ["deft", "layer"])
def test_batch_pauses_over_the_lane_by_hand(policy):
    w = parse_workload(TINY)
    r = simulate(w, policy, cpu_lane=True)
    # the lane: each 1.5 ms job alone, busy [5k, 5k + 1.5) ms
    assert r.records[0].latencies == pytest.approx([1.5 * MS] * 8)
    busy = [(5 * k * MS, (5 * k + 1.5) * MS) for k in range(8)]
    assert [x for iv in r.lane_busy for x in iv] == pytest.approx([x for iv in busy for x in iv])
    # the batch job pauses at 0 (until 1.5), runs 1.5-5.5, pauses until 6.5, runs 6.5-10.5;
    # each next job pauses at its start and after its second unit: 1 ms each, 10 ms per job
    assert r.records[1].latencies == pytest.approx([10.5 * MS, 10 * MS, 10 * MS, 10 * MS])
    starts = [0.0, 10.5, 20.5, 30.5, 35.5, 25.5, 15.5, 5.5]
    assert sorted(p[0] for p in r.pauses) == pytest.approx(sorted(x * MS for x in starts))
    assert r.preemptions == len(r.pauses) == 8
    paused = sum(e - s for s, e in r.pauses)
    assert paused == pytest.approx(8.5 * MS)
    # the pause total is the measured overlap: every pause lies in a busy interval, and the
    # client's time in the system less its units' run time is all pause
    assert overlap(r.pauses, r.lane_busy) == pytest.approx(paused)
    assert sum(r.records[1].latencies) - 16 * 2 * MS == pytest.approx(paused)
    # without the latency-critical stream, the batch client completes more
    alone = simulate(w.only(1), policy, cpu_lane=True)
    assert alone.records[0].latencies == pytest.approx([8 * MS] * 5)
    assert len(r.records[1].latencies) < len(alone.records[0].latencies)
    assert alone.preemptions == 0 and alone.pauses == []


def test_lane_units_cost_a_one_unit_chunk():
    doc = dict(TINY, streams=[TINY["streams"][1]])
    doc["device"] = {"launch_overhead_us": 5, "sync_overhead_us": 20}
    r = simulate(parse_workload(doc), "deft", cpu_lane=True)
    assert r.records[0].latencies[0] == pytest.approx(4 * (5 + 2000 + 20) * 1e-6)
    assert r.syncs == r.launches == 4 * len(r.records[0].latencies)


@pytest.mark.parametrize("policy", ["fifo", "priority"])
def test_non_preemptive_policies_ignore_lane_mode(policy):
    w = parse_workload(MIX)
    plain = simulate(w, policy)
    for forced in (True, None):
        r = simulate(dataclasses.replace(w, cpu_lane=True), policy, cpu_lane=forced)
        assert not r.cpu_lane and r.pauses == []
        assert [x.latencies for x in r.records] == [x.latencies for x in plain.records]
        assert r.preemptions == plain.preemptions


@pytest.mark.parametrize("policy", PREEMPTIVE)
def test_arrival_times_do_not_depend_on_lane_mode(policy):
    doc = json.loads(json.dumps(MIX))
    doc["streams"][1]["arrival"] = {"type": "trace", "offsets_ms": [0, 40, 41, 600, 1499]}
    w = parse_workload(doc)
    lane = simulate(w, policy, cpu_lane=True)
    plain = simulate(w, policy, cpu_lane=False)
    for a, b in zip(lane.records, plain.records, strict=True):
        assert a.arrivals == b.arrivals and a.arrived == len(a.arrivals) > 0
        assert a.arrived == len(a.latencies) + a.rejected + a.failed
    assert lane.lost == 0


def test_workload_flag_turns_lane_mode_on():
    doc = dict(MIX, device=dict(MIX["device"], cpu_lane=True))
    w = parse_workload(doc)
    assert w.cpu_lane and not parse_workload(MIX).cpu_lane
    assert simulate(w, "deft").cpu_lane
    assert not simulate(w, "deft", cpu_lane=False).cpu_lane
    with pytest.raises(WorkloadError, match=r"device\.cpu_lane: must be true or false"):
        parse_workload(dict(MIX, device={"cpu_lane": "true"}))


def test_merge_intervals():
    assert merge_intervals([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (5, 6)]) == [
        (0, 2.5),
        (3, 4),
        (5, 6),
    ]
    assert merge_intervals([]) == []


def test_cli_cpu_lane(tmp_path, capsys):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(MIX))
    assert main(["--workload", str(path), "--policy", "deft,fifo", "--json", "--cpu_lane"]) == 0
    deft, fifo = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert deft["cpu_lane"] is True and fifo["cpu_lane"] is False
    assert deft["preemption_delay_ms"]["p99"] == 0.0
    assert main(["--workload", str(path), "--policy", "deft", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_lane"] is False
    lane_file = tmp_path / "lane.json"
    lane_file.write_text(json.dumps(dict(MIX, device={"cpu_lane": True})))
    assert main(["--workload", str(lane_file), "--policy", "layer", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_lane"] is True
    assert main(["--workload", str(lane_file), "--policy", "layer", "--json", "--no_cpu_lane"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_lane"] is False
    assert main(["--workload", str(path), "--policy", "deft", "--cpu_lane"]) == 0
    captured = capsys.readouterr()
    assert "# deft (CPU lane):" in captured.err and "batch pauses" in captured.err
    assert captured.out.startswith("| policy | model |")
    with pytest.raises(SystemExit):
        main(["--workload", str(path), "--cpu_lane", "--no_cpu_lane"])
    capsys.readouterr()


def test_beside_the_lane_batch_work_is_never_split_into_micro_batches():
    """As in the runtime: latency-critical jobs do not wait for batch units on the lane, so
    ``deft`` keeps batches whole there even where, on one queue, units too long for the
    budget split them into micro-batches."""
    doc = json.loads(json.dumps(MIX))
    doc["streams"][0]["slo_ms"] = 3.5
    w = parse_workload(doc)

    def whole(r):
        return sum(len(rec.latencies) * w.models[rec.stream.model].num_units
                   for rec in r.records)

    one_queue = simulate(w, "deft", cpu_lane=False)
    assert one_queue.launches > whole(one_queue)  # split on one queue
    lane = simulate(w, "deft", cpu_lane=True)
    assert lane.launches == whole(lane)
    layer = simulate(w, "layer", cpu_lane=True)
    assert layer.launches == whole(layer)
