"""The co-run probe (``python -m e2e.bench.corun``): its arithmetic, and its conditions run on
a tiny model repository."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from e2e.bench import corun


def test_poisson_offsets_are_seeded_sorted_and_inside_the_window():
    a = corun.poisson_offsets(40.0, 5.0, seed=1)
    assert a == corun.poisson_offsets(40.0, 5.0, seed=1)
    assert a != corun.poisson_offsets(40.0, 5.0, seed=2)
    assert a == sorted(a) and a[0] > 0 and a[-1] < 5.0
    assert 120 < len(a) < 280  # about 200


def test_summary_takes_medians_over_rounds_and_p99_over_alone():
    ms = lambda *xs: [x / 1e3 for x in xs]  # noqa: E731
    rounds = [
        {"alone": ms(*[2.0] * 99, 4.0), "shards": ms(*[2.0] * 99, 6.0)},
        {"alone": ms(*[2.0] * 99, 5.0), "shards": ms(*[2.0] * 99, 9.0)},
        {"alone": ms(*[2.0] * 99, 3.0), "shards": ms(*[2.0] * 99, 7.5)},
    ]
    s = corun.summarize(rounds)
    assert list(s) == ["alone", "shards"]  # no process rounds: no row
    assert [r["p99_ms"] for r in s["alone"]["rounds"]] == [2.0, 2.0, 2.0]  # nearest rank
    rounds = [{k: v + v[-1:] for k, v in r.items()} for r in rounds]  # 2 slow of 101
    s = corun.summarize(rounds)
    assert s["alone"]["p99_ms"] == 4.0 and s["shards"]["p99_ms"] == 7.5
    assert s["shards"]["p99_over_alone"] == pytest.approx(1.875)
    assert s["alone"]["p99_over_alone"] == 1.0 and s["shards"]["samples"] == 303
    text = corun.markdown(s, {"lc": "d", "batch": "c", "batch_size": 8, "rate_per_s": 40,
                              "cores": 2, "rounds": 3, "seconds": 6})
    assert "| shards | 2.00 | 2.00 | 7.50 | 1.88 | 303 |" in text


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _write(root: Path, name: str, priority: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(Mlp().eval(), (torch.randn(2, 16),),
                                  dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, folder / "model.pt2")
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "priority": priority, "slo_ms": 20, "max_batch_size": 4, "max_units": 3,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    }))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> corun.Probe:
    root = tmp_path_factory.mktemp("corun")
    _write(root, "lc", "latency-critical")
    _write(root, "batch", "batch")
    return corun.Probe(root, "lc", "batch", 4, None, cores=2, profile=False)


def test_the_conditions_time_every_arrival_and_leave_nothing_running(probe):
    before = threading.active_count()
    offsets = [0.001 * i for i in range(1, 21)]
    alone = probe.measure("alone", offsets)
    beside = probe.measure("shards", offsets)
    assert len(alone) == len(beside) == 20 and min(alone + beside) > 0
    assert probe.shard_rows == 2
    assert threading.active_count() == before  # the shards stopped
    assert probe.lane_idle.is_set()  # the gate is open again
    with pytest.raises(ValueError, match="unknown condition"):
        probe.measure("elsewhere", offsets)


def test_unknown_conditions_are_refused(capsys):
    with pytest.raises(SystemExit):
        corun.main(["--conditions", "alone,nowhere"])
    assert "unknown conditions ['nowhere']" in capsys.readouterr().err


def test_suspended_batch_processes_are_stopped_exactly_while_each_job_computes(probe):
    import dataclasses
    import os
    import subprocess
    import time

    batch = subprocess.Popen(["sleep", "60"])
    seen: list[str] = []

    def state() -> str:
        with open(f"/proc/{batch.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    class Spy:
        def __init__(self, inner):
            self.inner, self.num_units = inner, inner.num_units

        def start(self, x):
            return self.inner.start(x)

        def run(self, st, a, b):
            seen.append(state())
            return self.inner.run(st, a, b)

        def finish(self, st):
            return self.inner.finish(st)

    real = probe.lc
    probe.lc = dataclasses.replace(real, model=Spy(real.model))
    try:
        took = probe.lc_compute([0.001, 0.002, 0.003], suspend=[batch.pid])
        assert len(took) == 3 and seen == ["T", "T", "T"]  # stopped while computing
        resumed = time.monotonic() + 10.0  # SIGCONT, too, is delivered a moment later
        while state() == "T" and time.monotonic() < resumed:
            os.sched_yield()
        assert state() in ("S", "R")  # and running again after
    finally:
        probe.lc = real
        batch.kill()
        batch.wait()
