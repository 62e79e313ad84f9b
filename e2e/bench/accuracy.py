"""How well Deft's models of time match the runtime: the delay predictor against in-process
measurements, and the simulator replaying the runtime's own profiles against the server.

- :func:`predictor_accuracy` loads every bench model the way the runtime does
  (``runtime.model_repository.load``: same units, same cached profile), predicts each batch
  size's inference delay with ``scheduler.predictor.Predictor`` and the runtime's device
  costs, and times the same plan with ``SegmentedModel.run``. Plans: ``one chunk`` (no
  latency-critical stream active) and ``every unit`` (what the CPU lane runs). For the batch
  models it also measures preemption delay: a second thread "arrives" at Poisson times and
  each arrival waits for the running job's next chunk boundary, as a latency-critical job
  waits for the batch job's next sync point.
- :func:`simulate_mix` turns a bench workload and the runtime's profile into a simulator
  workload and runs it; :func:`fixed_k_sweep` gives the ``fixed:K`` trade-off.
"""

from __future__ import annotations

import ast
import math
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e.bench.stats import median, percentile, relative_error
from e2e.server import ROOT

PREEMPTION_PLANS = ("every unit", "fixed:4", "one chunk")


def runtime_costs_us(device: str = "cpu") -> tuple[float, float]:
    """The runtime's (launch, sync) costs in µs for ``device``, read from
    ``runtime/serve.py``'s ``_COSTS_US`` without importing it (importing kserve's server
    module parses ``sys.argv``)."""
    tree = ast.parse((ROOT / "runtime" / "serve.py").read_text())
    for node in tree.body:
        targets = [getattr(t, "id", None) for t in getattr(node, "targets", [])]
        if getattr(getattr(node, "target", None), "id", None) == "_COSTS_US":
            targets.append("_COSTS_US")
        if "_COSTS_US" in targets and node.value is not None:  # type: ignore[attr-defined]
            table = ast.literal_eval(node.value)  # type: ignore[attr-defined]
            launch, sync = table[device]
            return float(launch), float(sync)
    raise LookupError("runtime/serve.py has no _COSTS_US")


def _plan(name: str, units: int):
    from scheduler.predictor import fixed_plan

    if name == "one chunk":
        return fixed_plan(units, units)
    if name == "every unit":
        return fixed_plan(units, 1)
    return fixed_plan(units, int(name.split(":", 1)[1]))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time_plan(seg: Any, inputs: Mapping, ends: Sequence[int], repeats: int,
               device: str = "cpu") -> list[float]:
    """Wall time of running the job chunk by chunk, a sync point after each chunk."""
    import torch

    out = []
    with torch.inference_mode():
        for attempt in range(repeats + 1):
            state = seg.start(inputs)
            _sync(device)
            began = time.perf_counter()
            s = 0
            for e in ends:
                state = seg.run(state, s, e)
                _sync(device)
                s = e
            took = time.perf_counter() - began
            seg.finish(state)
            if attempt:
                out.append(took)
    return out


def _preemption(seg: Any, inputs: Mapping, ends: Sequence[int], jobs: int,
                mean_gap_s: float, seed: int, device: str = "cpu") -> list[float]:
    """Waits (s) of Poisson arrivals for the next chunk boundary while ``jobs`` jobs run."""
    import torch

    arrivals: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def arrive() -> None:
        rng = random.Random(seed)
        while not stop.wait(rng.expovariate(1.0 / mean_gap_s)):
            with lock:
                arrivals.append(time.perf_counter())

    waits: list[float] = []
    with torch.inference_mode():
        state = seg.start(inputs)
        state = seg.run(state, 0, seg.num_units)  # warm
        seg.finish(state)
        thread = threading.Thread(target=arrive, daemon=True)
        thread.start()
        try:
            for _ in range(jobs):
                state = seg.start(inputs)
                with lock:
                    arrivals.clear()  # arrivals between jobs wait for nothing
                s = 0
                for e in ends:
                    state = seg.run(state, s, e)
                    _sync(device)
                    s = e
                    now = time.perf_counter()
                    with lock:
                        waits += [now - a for a in arrivals]
                        arrivals.clear()
                seg.finish(state)
        finally:
            stop.set()
            thread.join()
    return waits


def predictor_accuracy(
    model_dir: Path,
    *,
    repeats: int = 9,
    preemption_jobs: int = 4,
    cache_dir: Path | None = None,
    device: str = "cpu",
    batch_sizes: Callable[[str, list[int]], list[int]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Predicted vs measured inference delay per (model, batch size, plan), and predicted vs
    measured preemption delay per (batch model, plan) at its largest batch size."""

    from runtime import model_repository as repo
    from runtime.profiler import time_units
    from scheduler.predictor import Predictor
    from scheduler.profile import DeviceCosts, Profile

    launch_us, sync_us = runtime_costs_us("cuda" if device.startswith("cuda") else "cpu")
    predictor = Predictor(DeviceCosts.from_us(launch_us, sync_us))
    rows: list[dict[str, Any]] = []
    preempt: list[dict[str, Any]] = []
    for source in repo.discover(model_dir):
        loaded = repo.load(source, device, cache_dir=cache_dir)
        seg, cfg = loaded.model, loaded.config
        profile = Profile.from_us(loaded.profile)
        sizes = sorted(int(b) for b in loaded.profile)
        if batch_sizes is not None:
            sizes = batch_sizes(source.name, sizes)
        n = seg.num_units
        for bs in sizes:
            inputs = cfg.example_inputs(bs, device)
            cached = predictor.flat_durations(profile, bs)
            plans = {name: _plan(name, n) for name in ("one chunk", "every unit")}
            # The profiler's own pass (each unit timed alone) takes turns with the plans:
            # the machine's speed drifts by tens of percent within minutes, and a profile
            # taken minutes earlier would carry that drift into the error. The prediction
            # from the runtime's cached profile is kept beside it.
            times: dict[str, list[float]] = {name: [] for name in plans}
            passes: list[list[float]] = []
            for _ in range(repeats):
                # one untimed pass first, as ``_time_plan`` does before its timed one
                passes.append(time_units(seg, inputs, warmup=1, repeats=1))
                for plan_name, plan in plans.items():
                    times[plan_name] += _time_plan(seg, inputs, plan.chunk_ends, 1, device)
            units = [statistics.median(u) for u in zip(*passes, strict=True)]
            fresh = Profile.from_us({str(bs): units})
            durations = predictor.flat_durations(fresh, bs)
            for plan_name, plan in plans.items():
                predicted = predictor.predict(durations, plan).inference_delay
                from_cache = predictor.predict(cached, plan).inference_delay
                measured = statistics.median(times[plan_name])
                rows.append({
                    "model": source.name, "batch_size": bs, "plan": plan_name, "units": n,
                    "predicted_ms": round(predicted * 1e3, 3),
                    "measured_ms": round(measured * 1e3, 3),
                    "error": round(relative_error(predicted, measured), 4),
                    "cached_profile_predicted_ms": round(from_cache * 1e3, 3),
                    "cached_profile_error": round(relative_error(from_cache, measured), 4),
                })
        log(f"  predictor: {source.name} ({n} units) " + ", ".join(
            f"b{r['batch_size']} {r['plan']}: {r['predicted_ms']}/{r['measured_ms']} ms"
            for r in rows if r["model"] == source.name))
        if cfg.settings.priority.value != "batch" or not preemption_jobs:
            continue
        bs = sizes[-1]
        inputs = cfg.example_inputs(bs, device)
        durations = predictor.flat_durations(profile, bs)
        total = sum(durations)
        for plan_name in PREEMPTION_PLANS:
            plan = _plan(plan_name, n)
            pred = predictor.predict(durations, plan)
            waits = _preemption(seg, inputs, plan.chunk_ends, preemption_jobs,
                                mean_gap_s=max(total / 16, 0.0005), seed=bs, device=device)
            mean = statistics.fmean(waits) if waits else math.nan
            preempt.append({
                "model": source.name, "batch_size": bs, "plan": plan_name,
                "arrivals": len(waits),
                "predicted_expected_ms": round(pred.preemption_expected * 1e3, 3),
                "measured_mean_ms": round(mean * 1e3, 3) if waits else None,
                "predicted_worst_ms": round(pred.preemption_worst * 1e3, 3),
                "measured_p99_ms": round(percentile(waits, 0.99) * 1e3, 3) if waits else None,
                "measured_max_ms": round(max(waits) * 1e3, 3) if waits else None,
                "error": round(relative_error(pred.preemption_expected, mean), 4)
                if waits else None,
            })
    per_model, per_model_cached = {}, {}
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        per_model[name] = round(median([r["error"] for r in mine]), 4)
        per_model_cached[name] = round(median([r["cached_profile_error"] for r in mine]), 4)
    return {
        "costs_us": {"launch": launch_us, "sync": sync_us},
        "repeats": repeats,
        "inference": rows,
        "preemption": preempt,
        "median_error_by_model": per_model,
        "median_error": round(median(list(per_model.values())), 4) if per_model else None,
        "cached_profile_median_error": round(median(list(per_model_cached.values())), 4)
        if per_model_cached else None,
        "preemption_median_error": round(median([p["error"] for p in preempt
                                                 if p["error"] is not None]), 4)
        if preempt else None,
    }


def profile_agreement(model_dir: Path, profile: Mapping[str, Any], cache_dir: Path | None,
                      device: str = "cpu", repeats: int = 3) -> dict[str, float]:
    """Per model: the whole model's measured time at its largest profiled batch size over
    the profile's sum for it. Far from 1 means the profile was measured while something
    else held the cores (on a busy 2-core machine unit times come out in multiples of the
    OS time slice)."""
    from runtime import model_repository as repo

    out = {}
    for source in repo.discover(model_dir):
        rows = (profile.get(source.name) or {}).get("profile") or {}
        if not rows:
            continue
        bs = max(int(b) for b in rows)
        loaded = repo.load(source, device, cache_dir=cache_dir)
        n = loaded.model.num_units
        measured = statistics.median(_time_plan(loaded.model, loaded.config.example_inputs(
            bs, device), [n], repeats, device))
        out[source.name] = round(measured / (sum(rows[str(bs)]) / 1e6), 3)
    return out


class InProcess:
    """A model's compute throughput in this process (no HTTP), whole runs back to back at one
    batch size: what a server's throughput over HTTP is compared with (in alternating
    windows, ``load.alternating_throughput``)."""

    def __init__(self, model_dir: Path, model: str, batch_size: int, cache_dir: Path | None,
                 device: str = "cpu") -> None:
        from runtime import model_repository as repo

        self.batch_size = batch_size
        self.device = device
        self._loaded = repo.load(repo.find(model_dir, model), device, cache_dir=cache_dir)
        self._inputs = self._loaded.config.example_inputs(batch_size, device)

    def measure(self, seconds: float) -> float:
        seg = self._loaded.model
        ends = [seg.num_units]
        _time_plan(seg, self._inputs, ends, 1, self.device)  # warm
        took: list[float] = []
        while sum(took) < seconds:
            took += _time_plan(seg, self._inputs, ends, 1, self.device)
        return self.batch_size * len(took) / sum(took)


# ---------------------------------------------------------------------------------------------
# the simulator


def simulate_mix(sim_workload: Mapping[str, Any], policies: Sequence[str]) -> dict[str, Any]:
    """Run a simulator workload (dict) under each policy: ``{policy: summary}`` with the
    ``--json`` stream fields, plus each latency-critical stream's simulated solo p50/p99."""
    from scheduler.sim.engine import percentile as sim_percentile
    from scheduler.sim.engine import simulate
    from scheduler.sim.report import SoloBaselines, summarize
    from scheduler.sim.workload import parse_workload

    wl = parse_workload(sim_workload)
    solo = SoloBaselines(wl)
    out: dict[str, Any] = {"policies": {}, "solo_p50_ms": {}, "solo_p99_ms": {}}
    for i, s in enumerate(wl.streams):
        if s.priority.value == "latency-critical":
            rec = simulate(wl.only(i), "fifo").records[0]
            out["solo_p50_ms"][i] = round(sim_percentile(rec.latencies, 0.5) * 1e3, 4)
            out["solo_p99_ms"][i] = round(sim_percentile(rec.latencies, 0.99) * 1e3, 4)
    for policy in policies:
        summary = summarize(simulate(wl, policy), solo)
        out["policies"][policy] = {k: summary[k] for k in
                                   ("streams", "preemption_delay_ms", "sync_points")}
    return out


def fixed_k_sweep(sim_workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``fixed:K`` for K = 1, 2, 4, ... up to the longest model's unit count, then ``deft``:
    each point's batch inference p50 and latency-critical p99 (ms), from the simulator."""
    from scheduler.sim.engine import simulate
    from scheduler.sim.report import SoloBaselines, summarize
    from scheduler.sim.workload import parse_workload

    wl = parse_workload(sim_workload)
    solo = SoloBaselines(wl)
    units = max(p.num_units for p in wl.models.values())
    ks = [1]
    while ks[-1] * 2 < units:
        ks.append(ks[-1] * 2)
    if units > 1:
        ks.append(units)
    points = []
    for policy in [f"fixed:{k}" for k in ks] + ["deft"]:
        s = summarize(simulate(wl, policy), solo)
        batch = [st for st in s["streams"] if st["priority"] == "batch"]
        lc = [st for st in s["streams"] if st["priority"] == "latency-critical"]
        points.append({
            "policy": policy,
            "batch_inference_p50_ms": max((st["inference_p50_ms"] or 0 for st in batch),
                                          default=None),
            "lc_p99_ms": max((st["p99_ms"] or 0 for st in lc), default=None),
            "lc_slo_attainment": min((st["slo_attainment"] or 0 for st in lc), default=None),
            "sync_points": s["sync_points"],
        })
    return points
