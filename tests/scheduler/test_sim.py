"""The simulator: determinism, the solo baseline, conservation, and bad workload files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.sim.__main__ import main
from scheduler.sim.engine import percentile, simulate
from scheduler.sim.workload import WorkloadError, parse_workload

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "name": "small",
    "duration_s": 2,
    "seed": 7,
    "device": {"launch_overhead_us": 5, "sync_overhead_us": 20},
    "models": {
        "det": {"profile": {"1": [100, 150, 80]}},
        "big": {"profile": {"1": [400] * 10, "8": [2000] * 10}},
    },
    "streams": [
        {
            "model": "det",
            "priority": "latency-critical",
            "slo_ms": 2,
            "arrival": {"type": "poisson", "rate_per_s": 100},
        },
        {
            "model": "det",
            "priority": "latency-critical",
            "slo_ms": 3,
            "timeout_ms": 5,
            "arrival": {"type": "trace", "offsets_ms": [1, 2, 3, 500, 501]},
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
            "batch_size": 1,
            "slo_ms": 50,
            "timeout_ms": 30,
            "arrival": {"type": "periodic", "rate_per_s": 20},
        },
    ],
}


def write(tmp_path, doc, name="w.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def test_same_file_and_seed_give_byte_identical_json(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    outs = []
    for _ in range(2):
        assert main(["--workload", path, "--policy", "deft,layer,fifo", "--json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    lines = [json.loads(x) for x in outs[0].splitlines()]
    assert [x["policy"] for x in lines] == ["deft", "layer", "fifo"]
    for obj in lines:
        assert set(obj) == {"policy", "workload", "cpu_lane", "streams", "preemption_delay_ms"}
        assert obj["cpu_lane"] is False
        assert set(obj["preemption_delay_ms"]) == {"p50", "p99"}
        for st in obj["streams"]:
            for key in (
                "model",
                "priority",
                "completed",
                "p50_ms",
                "p99_ms",
                "solo_p99_ms",
                "slo_attainment",
                "throughput_per_s",
            ):
                assert key in st
        assert obj["streams"][2]["slo_attainment"] is None


@pytest.mark.parametrize("policy", ["fifo", "priority", "layer", "fixed:4", "deft"])
def test_every_arrival_is_completed_or_rejected(policy):
    result = simulate(parse_workload(SMALL), policy)
    assert result.lost == 0
    for rec in result.records:
        assert rec.arrived == len(rec.latencies) + rec.rejected + rec.failed
        assert rec.arrived > 0


def test_solo_baseline_is_the_stream_alone():
    w = parse_workload(SMALL)
    alone = simulate(w.only(0), "fifo")
    # one stream alone: every job of 'det' takes its unit chain plus one sync point
    service = (5 + 100 + 150 + 80 + 20) * 1e-6
    assert min(alone.records[0].latencies) == pytest.approx(service)
    assert percentile(alone.records[0].latencies, 0.5) >= service


def test_periodic_arrivals_are_exact():
    doc = dict(SMALL, streams=[SMALL["streams"][3]], duration_s=1)
    r = simulate(parse_workload(doc), "fifo")
    assert r.records[0].arrived == 20


BAD = [
    ({"duration_s": -1}, "duration_s"),
    ({"duration_s": "x"}, "duration_s"),
    ({"models": {}}, "models"),
    ({"streams": []}, "streams"),
    (
        {"streams": [{"model": "nope", "arrival": {"type": "closed", "clients": 1}}]},
        "streams[0].model",
    ),
    (
        {"streams": [{"model": "det", "arrival": {"type": "poisson", "rate_per_s": -3}}]},
        "streams[0].arrival.rate_per_s",
    ),
    ({"streams": [{"model": "det", "arrival": {"type": "burst"}}]}, "streams[0].arrival.type"),
    (
        {
            "streams": [
                {"model": "det", "priority": "urgent", "arrival": {"type": "closed", "clients": 1}}
            ]
        },
        "streams[0].priority",
    ),
    (
        {
            "streams": [
                {
                    "model": "det",
                    "priority": "latency-critical",
                    "arrival": {"type": "closed", "clients": 1},
                }
            ]
        },
        "streams[0].slo_ms",
    ),
    ({"models": {"det": {"profile": {"1": [1, "a"]}}}}, "models.det.profile.1"),
    ({"models": {"det": {"profile": {"1": [1], "2": [1, 2]}}}}, "models.det.profile"),
    ({"device": {"cpu_lane": "yes"}}, "device.cpu_lane"),
    ({"device": {"cpu_lane": 1}}, "device.cpu_lane"),
]


@pytest.mark.parametrize(("change", "field"), BAD)
def test_bad_workloads_exit_2_with_one_line_naming_the_field(tmp_path, capsys, change, field):
    doc = dict(SMALL, **change)
    if "models" in change and change["models"]:
        doc["streams"] = [{"model": "det", "arrival": {"type": "closed", "clients": 1}}]
    assert main(["--workload", write(tmp_path, doc), "--policy", "deft"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and field in err
    assert "Traceback" not in err


def test_unknown_policy_and_unreadable_file(tmp_path, capsys):
    assert main(["--workload", write(tmp_path, SMALL), "--policy", "edf"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert main(["--workload", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "broken.json").write_text("{")
    assert main(["--workload", str(tmp_path / "broken.json")]) == 2
    assert "invalid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["disb-mix", "disb-batch32", "disb-deadlines"])
def test_shipped_workloads_parse(name):
    w = parse_workload(json.loads((ROOT / "workloads" / f"{name}.json").read_text()))
    assert len(w.streams) >= 2


def test_table_and_sweep_output(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    assert main(["--workload", path, "--policy", "fifo,deft", "--slo-factor", "1.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| policy | model |") and "| deft | det |" in out
    assert main(["--workload", path, "--sweep"]) == 0
    out = capsys.readouterr().out
    assert "| fixed:1 |" in out and "| deft |" in out


def test_cli_runs_as_a_module(tmp_path):
    path = write(tmp_path, SMALL)
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler.sim", "--workload", path, "--policy", "fixed:0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "fixed:K" in proc.stderr


TWO_BATCH = {
    "name": "two-batch",
    "duration_s": 5,
    "seed": 3,
    "device": {"launch_overhead_us": 5, "sync_overhead_us": 20},
    "models": {
        "slow": {"profile": {"8": [10000] * 10}},
        "fast": {"profile": {"8": [10000] * 2}},
    },
    "streams": [
        {"model": "slow", "priority": "batch", "batch_size": 8,
         "arrival": {"type": "closed", "clients": 1}},
        {"model": "fast", "priority": "batch", "batch_size": 8,
         "arrival": {"type": "closed", "clients": 1}},
    ],
}


def _done(result, model):
    return sum(len(r.latencies) for r, s in zip(result.records, result.workload.streams,
                                                  strict=True) if s.model == model)


def _p99(result, model):
    lat = [x for r, s in zip(result.records, result.workload.streams, strict=True)
           if s.model == model for x in r.latencies]
    return percentile(lat, 0.99)


def test_batch_models_share_the_simulated_device_by_time_in_slices():
    sliced = simulate(parse_workload(TWO_BATCH), "deft")
    whole = simulate(parse_workload({**TWO_BATCH, "device": {
        **TWO_BATCH["device"], "batch_slice_ms": 1e6}}), "deft")
    # jobs take 100 and 20 ms and each client sends its next request the moment the last is
    # answered: by device time, "fast" completes about five jobs per "slow" job either way
    for result in (sliced, whole):
        assert _done(result, "fast") / _done(result, "slow") == pytest.approx(5, rel=0.2)
    # in 20 ms slices a "fast" job never waits for a whole "slow" job
    assert _p99(sliced, "fast") < 0.05 < 0.1 < _p99(whole, "fast")


def test_the_batch_slice_comes_from_the_workload_or_the_command_line(tmp_path, capsys):
    assert parse_workload(TWO_BATCH).batch_slice_s == 0.02
    path = write(tmp_path, TWO_BATCH)
    p99 = []
    for extra in ([], ["--batch_slice_ms", "1000000"]):
        assert main(["--workload", path, "--policy", "deft", "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        p99.append({st["model"]: st["p99_ms"] for st in out["streams"]}["fast"])
    assert p99[0] < 50 < 100 < p99[1]
    assert main(["--workload", path, "--batch_slice_ms", "0"]) == 2
    with pytest.raises(WorkloadError, match="batch_slice_ms"):
        parse_workload({**TWO_BATCH, "device": {"batch_slice_ms": -5}})
