"""Bench workload files: parsing for the real-runtime driver, arrival times shared with the
simulator, and the conversion into a simulator workload."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from e2e.bench.driver import INT_IDS, make_input, resolve_slos
from e2e.bench.workload import (
    SloSpec,
    arrival_offsets,
    load_bench_workload,
    parse_bench_workload,
    to_sim_workload,
)
from scheduler.sim.engine import simulate
from scheduler.sim.workload import WorkloadError, parse_workload

MIXES = sorted((Path(__file__).resolve().parents[1] / "e2e" / "bench" / "workloads")
               .glob("*.json"))


def doc(**over):
    base = {
        "name": "m", "duration_s": 2, "seed": 5,
        "models": {"det": {}, "cls": {"profile": {"1": [100, 200]}}},
        "streams": [
            {"model": "det", "priority": "latency-critical", "slo_ms": {"solo_p99_factor": 1.5},
             "arrival": {"type": "poisson", "rate_per_s": 40}},
            {"model": "cls", "priority": "batch", "batch_size": 4,
             "arrival": {"type": "closed", "clients": 2}},
        ],
    }
    base.update(over)
    return base


def test_parses_factor_and_absolute_slos():
    wl = parse_bench_workload(doc())
    assert [s.model for s in wl.latency_critical] == ["det"]
    assert [s.model for s in wl.batch] == ["cls"]
    assert wl.streams[0].slo == SloSpec(solo_p99_factor=1.5)
    assert wl.streams[0].slo.resolve(10.0) == 15.0
    assert wl.streams[1].slo.resolve(None) is None
    d = doc()
    d["streams"][0]["slo_ms"] = 12
    assert parse_bench_workload(d).streams[0].slo.resolve(None) == 12.0


@pytest.mark.parametrize("change, field", [
    ({"name": ""}, "name"),
    ({"duration_s": 0}, "duration_s"),
    ({"models": {}}, "models"),
    ({"streams": []}, "streams"),
])
def test_rejects_bad_top_level(change, field):
    with pytest.raises(WorkloadError) as err:
        parse_bench_workload(doc(**change))
    assert err.value.field == field


def test_rejects_bad_streams():
    d = doc()
    d["streams"][0]["slo_ms"] = {"solo_p99_factor": -1}
    with pytest.raises(WorkloadError, match="slo_ms"):
        parse_bench_workload(d)
    d = doc()
    del d["streams"][0]["slo_ms"]
    with pytest.raises(WorkloadError, match="required for a latency-critical"):
        parse_bench_workload(d)
    d = doc()
    d["streams"][1]["model"] = "nope"
    with pytest.raises(WorkloadError, match="unknown model"):
        parse_bench_workload(d)
    d = doc()
    d["streams"][0]["arrival"] = {"type": "burst"}
    with pytest.raises(WorkloadError, match="arrival.type"):
        parse_bench_workload(d)


def test_arrival_offsets():
    wl = parse_bench_workload(doc())
    periodic = parse_bench_workload(doc(streams=[{
        "model": "det", "priority": "batch", "arrival": {"type": "periodic", "rate_per_s": 4}}]))
    assert arrival_offsets(periodic.streams[0].arrival, 1.0, 0, 0) == [0.0, 0.25, 0.5, 0.75]
    poisson = arrival_offsets(wl.streams[0].arrival, 2.0, wl.seed, 0)
    assert poisson == arrival_offsets(wl.streams[0].arrival, 2.0, wl.seed, 0)  # seeded
    assert poisson != arrival_offsets(wl.streams[0].arrival, 2.0, wl.seed + 1, 0)
    assert all(0 < a < b < 2.0 for a, b in zip(poisson, poisson[1:], strict=False))
    assert arrival_offsets(wl.streams[1].arrival, 2.0, wl.seed, 1) == []
    trace = parse_bench_workload(doc(streams=[{
        "model": "det", "priority": "batch",
        "arrival": {"type": "trace", "offsets_ms": [1500, 5, 900]}}]))
    assert arrival_offsets(trace.streams[0].arrival, 1.0, 0, 0) == [0.005, 0.9]


@pytest.mark.parametrize("arrival", [
    {"type": "poisson", "rate_per_s": 50}, {"type": "periodic", "rate_per_s": 30},
    {"type": "trace", "offsets_ms": [3, 4, 5, 700, 1999, 2500]},
])
def test_offsets_are_the_simulators_arrivals(arrival):
    """On a device too fast to queue, the simulator completes exactly one job per arrival the
    driver would send."""
    d = doc(duration_s=2.0, seed=9, models={"det": {"profile": {"1": [1]}}},
            streams=[{"model": "det", "priority": "batch", "arrival": arrival}])
    wl = parse_bench_workload(d)
    sim = parse_workload(to_sim_workload(wl, {}, {}, {"launch_overhead_us": 0}))
    done = len(simulate(sim, "fifo").records[0].latencies)
    assert done == len(arrival_offsets(wl.streams[0].arrival, 2.0, 9, 0))


def test_to_sim_workload_fills_profiles_slos_and_device():
    wl = parse_bench_workload(doc())
    out = to_sim_workload(wl, {"det": {"1": [10.0, 20.0]}}, {0: 7.5},
                          {"launch_overhead_us": 15, "sync_overhead_us": 0}, duration_s=1.0)
    assert out["models"]["det"]["profile"] == {"1": [10.0, 20.0]}
    assert out["models"]["cls"]["profile"] == {"1": [100, 200]}  # the file's own wins
    assert out["streams"][0]["slo_ms"] == 7.5 and "slo_ms" not in out["streams"][1]
    assert out["device"]["launch_overhead_us"] == 15 and out["duration_s"] == 1.0
    parse_workload(json.loads(json.dumps(out)))  # a valid simulator workload
    with pytest.raises(WorkloadError, match="not resolved"):
        to_sim_workload(wl, {"det": {"1": [1.0]}}, {}, {})
    with pytest.raises(WorkloadError, match="no profile"):
        to_sim_workload(wl, {}, {0: 1.0}, {})
    assert "cpu_lane" not in out["device"] and not parse_workload(out).cpu_lane


def test_to_sim_workload_cpu_lane():
    """On a CPU the suite's simulator workload asks for the runtime's CPU lane."""
    wl = parse_bench_workload(doc())
    out = to_sim_workload(wl, {"det": {"1": [10.0, 20.0]}}, {0: 7.5},
                          {"launch_overhead_us": 15, "sync_overhead_us": 0}, cpu_lane=True)
    assert out["device"] == {"launch_overhead_us": 15, "sync_overhead_us": 0, "cpu_lane": True}
    sim = parse_workload(json.loads(json.dumps(out)))
    assert sim.cpu_lane and simulate(sim, "deft").cpu_lane
    assert not simulate(sim, "fifo").cpu_lane  # as in the runtime: no lane without preemption


def test_resolve_slos_uses_reference_solo_p99():
    wl = parse_bench_workload(doc())
    assert resolve_slos(wl, {0: 10.0}) == {0: 15.0}
    assert resolve_slos(wl, {}) == {}


def test_make_input_follows_the_model_spec():
    spec = {"name": "cls", "inputs": [{"name": "image", "datatype": "FP32",
                                       "shape": [-1, 3, 8, 8]}]}
    name, x = make_input(spec, 4, seed=1)
    assert name == "image" and x.shape == (4, 3, 8, 8) and str(x.dtype) == "float32"
    name, ids = make_input({"name": "t", "inputs": [{"name": "ids", "datatype": "INT64",
                                                     "shape": [-1, 16]}]}, 2, 0)
    assert name == "ids" and ids.shape == (2, 16) and str(ids.dtype) == "int64"
    assert ids.min() >= 0 and ids.max() < INT_IDS and len(set(ids.ravel().tolist())) > 1
    with pytest.raises(ValueError, match="FP32 and INT64"):
        make_input({"name": "t", "inputs": [{"name": "m", "datatype": "BOOL",
                                             "shape": [-1, 4]}]}, 1, 0)


def test_shipped_mixes():
    assert len(MIXES) >= 3
    models = set()
    kinds = set()
    for path in MIXES:
        wl = load_bench_workload(path)
        models |= set(wl.models)
        kinds |= {s.arrival.type for s in wl.latency_critical}
        assert wl.latency_critical and wl.batch
        assert all(s.arrival.type == "closed" for s in wl.batch)
        assert max(len(w.models) for w in [wl]) >= 2
    assert {"periodic", "poisson", "trace"} <= kinds
    assert models == {"detector", "classifier", "embedder"}
    assert any(len(load_bench_workload(p).models) >= 3 for p in MIXES)
    assert not math.isnan(load_bench_workload(MIXES[0]).duration_s)


def test_cli_turns_a_mix_and_a_profile_into_a_simulator_workload(tmp_path, capsys):
    from e2e.bench.workload import main

    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps(doc()))
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps({"models": {"det": {"profile": {"1": [500.0, 500.0]}}},
                                "device": "cpu"}))
    assert main([str(mix), "--profile", str(prof)]) == 0
    sim = json.loads(capsys.readouterr().out)
    from scheduler.sim.report import SoloBaselines

    solo_p99_ms = SoloBaselines(parse_workload(sim)).p99(0) * 1000.0
    assert solo_p99_ms >= 1.0  # two 0.5 ms units, and some queueing
    assert sim["streams"][0]["slo_ms"] == pytest.approx(1.5 * solo_p99_ms, abs=1e-3)
    assert main([str(mix), "--profile", str(tmp_path / "missing.json")]) == 2
