"""Bench workload files: one DISB-style mix, read by the real-runtime driver and, once the
runtime's profiles are filled in, by the simulator.

The file is the simulator's workload format (docs/simulator.md) with
two relaxations, so the same file can describe a mix before anything is measured:

- ``models.<name>`` names a model of the bench model repository; its ``profile`` may be left
  out (the suite fills it from ``python -m runtime profile``);
- a stream's ``slo_ms`` may be ``{"solo_p99_factor": F}``: F times the stream's solo p99 as
  measured on the reference system (Deft with the ``deft`` policy), or in the simulator on
  the simulated device.

``device`` is optional (the simulator's costs for the runtime's device are filled in).
Arrival types are the simulator's: ``periodic`` and ``poisson`` (``rate_per_s``), ``trace``
(``offsets_ms``) drive open-loop clients; ``closed`` (``clients``) drives closed-loop ones.
:func:`arrival_offsets` draws exactly the arrival times the simulator draws for the same
file, so both see the same request sequence.

Pure: no torch, no network.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.priority import Priority
from scheduler.sim.workload import Arrival, WorkloadError, parse_arrival, parse_stream_basics

SLO_FACTOR_KEY = "solo_p99_factor"


@dataclass(frozen=True)
class SloSpec:
    """A stream's SLO: absolute milliseconds, or a factor of its solo p99."""

    ms: float | None = None
    solo_p99_factor: float | None = None

    def resolve(self, solo_p99_ms: float | None) -> float | None:
        """The SLO in milliseconds, given the reference solo p99 (needed for a factor)."""
        if self.ms is not None:
            return self.ms
        if self.solo_p99_factor is None:
            return None
        if solo_p99_ms is None or not math.isfinite(solo_p99_ms):
            raise ValueError("a solo_p99_factor SLO needs a measured solo p99")
        return round(self.solo_p99_factor * solo_p99_ms, 3)

    def to_json(self) -> Any:
        if self.ms is not None:
            return self.ms
        if self.solo_p99_factor is not None:
            return {SLO_FACTOR_KEY: self.solo_p99_factor}
        return None


@dataclass(frozen=True)
class BenchStream:
    model: str
    priority: Priority
    batch_size: int
    arrival: Arrival
    slo: SloSpec
    index: int

    @property
    def latency_critical(self) -> bool:
        return self.priority is Priority.LATENCY_CRITICAL

    @property
    def open_loop(self) -> bool:
        return self.arrival.type != "closed"

    def describe(self) -> str:
        a = self.arrival
        if a.type in ("periodic", "poisson"):
            how = f"{a.type} {a.rate_per_s:g}/s"
        elif a.type == "closed":
            how = f"closed x{a.clients}"
        else:
            how = f"trace ({len(a.offsets_ms)} arrivals)"
        return f"{self.model} b{self.batch_size} {how}"


@dataclass(frozen=True)
class BenchWorkload:
    name: str
    duration_s: float
    seed: int
    models: Mapping[str, Mapping[str, Any]]  # name -> the file's entry (may hold a profile)
    device: Mapping[str, float] | None
    streams: tuple[BenchStream, ...]
    description: str = ""
    raw: Mapping[str, Any] | None = None

    @property
    def latency_critical(self) -> list[BenchStream]:
        return [s for s in self.streams if s.latency_critical]

    @property
    def batch(self) -> list[BenchStream]:
        return [s for s in self.streams if not s.latency_critical]


def _parse_slo(value: Any, where: str) -> SloSpec:
    if value is None:
        return SloSpec()
    if isinstance(value, Mapping):
        unknown = set(value) - {SLO_FACTOR_KEY}
        factor = value.get(SLO_FACTOR_KEY)
        if unknown or isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                or not factor > 0:
            raise WorkloadError(where, f"must be a number or {{{SLO_FACTOR_KEY!r}: F > 0}}, "
                                f"got {value!r}")
        return SloSpec(solo_p99_factor=float(factor))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise WorkloadError(where, f"must be a positive number, got {value!r}")
    return SloSpec(ms=float(value))


def parse_bench_workload(data: Any) -> BenchWorkload:
    """Validate a bench workload (see the module docstring); raises ``WorkloadError``."""
    if not isinstance(data, Mapping):
        raise WorkloadError("workload", "must be an object")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise WorkloadError("name", "is required and must be a string")
    duration = data.get("duration_s")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0:
        raise WorkloadError("duration_s", f"must be a number > 0, got {duration!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WorkloadError("seed", f"must be an integer, got {seed!r}")
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        raise WorkloadError("models", "is required and must name at least one model")
    for mname, entry in models.items():
        if not isinstance(entry, Mapping):
            raise WorkloadError(f"models.{mname}", "must be an object (may be empty)")
    device = data.get("device")
    if device is not None and not isinstance(device, Mapping):
        raise WorkloadError("device", "must be an object")
    raw_streams = data.get("streams")
    if not isinstance(raw_streams, list) or not raw_streams:
        raise WorkloadError("streams", "is required and must be a non-empty list")
    streams = []
    for i, s in enumerate(raw_streams):
        where = f"streams[{i}]"
        if not isinstance(s, Mapping):
            raise WorkloadError(where, "must be an object")
        model, priority, bs = parse_stream_basics(s, where, models)
        slo = _parse_slo(s.get("slo_ms"), f"{where}.slo_ms")
        if priority is Priority.LATENCY_CRITICAL and slo == SloSpec():
            raise WorkloadError(f"{where}.slo_ms", "is required for a latency-critical stream")
        arrival = parse_arrival(s.get("arrival"), f"{where}.arrival")
        streams.append(BenchStream(str(model), priority, bs, arrival, slo, i))
    return BenchWorkload(
        name=name, duration_s=float(duration), seed=seed,
        models={str(k): dict(v) for k, v in models.items()},
        device=dict(device) if device is not None else None,
        streams=tuple(streams), description=str(data.get("description", "")), raw=data,
    )


def load_bench_workload(path: str | Path) -> BenchWorkload:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise WorkloadError("workload", f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise WorkloadError("workload", f"{path}: invalid JSON at line {exc.lineno}") from None
    return parse_bench_workload(data)


def arrival_offsets(arrival: Arrival, duration_s: float, seed: int, index: int) -> list[float]:
    """Send times (seconds from the phase start) of an open-loop stream, as the simulator
    draws them for stream ``index`` of a workload with ``seed``; ``[]`` for ``closed``."""
    if arrival.type == "closed":
        return []
    if arrival.type == "periodic":
        n = math.ceil(duration_s * arrival.rate_per_s - 1e-9)
        return [i / arrival.rate_per_s for i in range(n)]
    if arrival.type == "poisson":
        rng = random.Random(seed * 1_000_003 + index)
        out, t = [], rng.expovariate(arrival.rate_per_s)
        while t < duration_s:
            out.append(t)
            t += rng.expovariate(arrival.rate_per_s)
        return out
    return [x / 1000.0 for x in arrival.offsets_ms if x / 1000.0 < duration_s]


def to_sim_workload(
    wl: BenchWorkload,
    profiles: Mapping[str, Mapping[str, list[float]]],
    slo_ms: Mapping[int, float],
    device: Mapping[str, float],
    duration_s: float | None = None,
    strict: bool = True,
    cpu_lane: bool = False,
) -> dict[str, Any]:
    """The simulator's workload (a JSON-ready dict): profiles from ``profiles`` (model ->
    ``{"<batch>": [µs, ...]}``, the profiler's shape) where the file has none, every SLO
    resolved (``slo_ms``: stream index -> ms, used for factor SLOs), ``device`` where the file
    gives none. With ``strict`` False a factor SLO missing from ``slo_ms`` is left out
    (:func:`resolve_in_simulator` fills it). ``cpu_lane`` sets ``device.cpu_lane``: the
    simulator then models the runtime's CPU lane for the preemptive policies."""
    models = {}
    for name, entry in wl.models.items():
        profile = entry.get("profile") or profiles.get(name)
        if not profile:
            raise WorkloadError(f"models.{name}.profile", "no profile in the file or measured")
        models[name] = {"profile": {str(k): list(v) for k, v in profile.items()}}
    streams = []
    for s in wl.streams:
        out: dict[str, Any] = {"model": s.model, "priority": s.priority.value,
                               "batch_size": s.batch_size, "arrival": _arrival_json(s.arrival)}
        slo = s.slo.ms if s.slo.ms is not None else slo_ms.get(s.index)
        if s.slo.solo_p99_factor is not None and slo is None and strict:
            raise WorkloadError(f"streams[{s.index}].slo_ms", "factor SLO not resolved")
        if slo is not None:
            out["slo_ms"] = slo
        streams.append(out)
    sim_device: dict[str, Any] = dict(wl.device) if wl.device else dict(device)
    if cpu_lane:
        sim_device["cpu_lane"] = True
    return {
        "name": wl.name,
        "duration_s": duration_s or wl.duration_s,
        "seed": wl.seed,
        "device": sim_device,
        "models": models,
        "streams": streams,
    }


def _arrival_json(a: Arrival) -> dict[str, Any]:
    if a.type in ("periodic", "poisson"):
        return {"type": a.type, "rate_per_s": a.rate_per_s}
    if a.type == "closed":
        return {"type": "closed", "clients": a.clients}
    return {"type": "trace", "offsets_ms": list(a.offsets_ms)}


def resolve_in_simulator(wl: BenchWorkload, sim_workload: dict[str, Any]) -> dict[str, Any]:
    """Fill the factor SLOs that ``sim_workload`` still lacks from the simulator's own solo
    p99 of each stream (what ``python -m scheduler.sim --slo-factor`` does for one factor)."""
    from scheduler.sim.report import SoloBaselines
    from scheduler.sim.workload import parse_workload

    pending = [s for s in wl.streams
               if s.slo.solo_p99_factor is not None and "slo_ms" not in sim_workload["streams"][
                   s.index]]
    if not pending:
        return sim_workload
    draft = json.loads(json.dumps(sim_workload))
    for s in pending:  # a placeholder so the draft parses; solo runs ignore SLOs' values
        draft["streams"][s.index]["slo_ms"] = 1.0
    solo = SoloBaselines(parse_workload(draft))
    for s in pending:
        sim_workload["streams"][s.index]["slo_ms"] = s.slo.resolve(solo.p99(s.index) * 1000.0)
    return sim_workload


def main(argv: list[str] | None = None) -> int:
    """``python -m e2e.bench.workload MIX.json --profile PROFILE.json [--out SIM.json]``:
    the mix as a simulator workload, with the profiles of ``python -m runtime profile`` and
    factor SLOs taken from the simulator's own solo p99."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m e2e.bench.workload", description=main.__doc__)
    p.add_argument("mix", type=Path)
    p.add_argument("--profile", type=Path, required=True,
                   help="the JSON that `python -m runtime profile --out` writes")
    p.add_argument("--launch_overhead_us", type=float, default=15.0)
    p.add_argument("--sync_overhead_us", type=float, default=0.0)
    p.add_argument("--cpu_lane", action="store_true",
                   help="model the runtime's CPU lane in the simulator (device.cpu_lane)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        wl = load_bench_workload(args.mix)
        models = json.loads(args.profile.read_text())["models"]
        sim = to_sim_workload(wl, {k: v["profile"] for k, v in models.items()}, {},
                              {"launch_overhead_us": args.launch_overhead_us,
                               "sync_overhead_us": args.sync_overhead_us}, strict=False,
                              cpu_lane=args.cpu_lane)
        sim = resolve_in_simulator(wl, sim)
    except (WorkloadError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(sim, indent=1) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
