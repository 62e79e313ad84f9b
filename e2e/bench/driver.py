"""Drives one mix (a bench workload) against one running server with real clients.

Phases, on the same server, in this order:

1. *probe* (the first mix only): sequential round trips of each latency-critical model;
2. *solo*: each latency-critical stream alone, open-loop with its own arrival times, for
   ``solo_s``: its solo p50/p99 on this system;
3. the SLOs are fixed: absolute ones as given, ``solo_p99_factor`` ones from the reference
   system's solo p99 (``slo_ms`` passed in) or, on the reference system, from step 2;
   ``apply_slos`` hands them to the server (Deft reads them from its priorities file);
4. *batch-only*: the batch streams' closed-loop clients start; after ``warm_s`` their
   completions during ``batch_only_s`` give each batch stream's solo throughput and p99;
5. *mixed*: the latency-critical streams start while the batch clients keep going, for the
   mix's ``duration_s`` x ``mixed_scale``.

Latency-critical requests carry tritonclient's ``priority=1`` on systems that take it; batch
requests carry none (the model's default level).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from e2e.bench.load import ClosedLoop, Stream, open_loop_at, sequential
from e2e.bench.stats import Measured, completion_rate, percentile
from e2e.bench.workload import BenchStream, BenchWorkload, arrival_offsets

LC_PRIORITY = 1  # tritonclient's highest request-level priority


@dataclass(frozen=True)
class Phases:
    solo_s: float = 3.0
    # the reference system's solo phase on the primary mix: its p99 sets the SLO that every
    # system is held to, so it takes more samples (at 20/s, 3 s leaves the p99 the maximum)
    reference_solo_s: float = 12.0
    batch_only_s: float = 4.0
    warm_s: float = 1.0
    mixed_scale: float = 1.0
    probe_requests: int = 100
    lc_timeout_s: float = 20.0  # an LC request unanswered by then is an error (a miss)
    batch_grace_s: float = 3.0  # batch requests still in flight this long after the end
    # batch-only again after the mixed phase, for this long: the batch streams' solo figures
    # then come from before and after it, so that a machine whose speed drifts during the
    # mix does not pass for the latency-critical load's cost (0: before only)
    batch_after_s: float = 0.0
    # whether the primary mix measures batch-only after its mixed phase too (for batch_only_s)
    primary_batch_after: bool = True
    # paired windows: the primary mix's mixed phase on Deft's reference and Triton in turns,
    # this many rounds of this long each after a short warm-up (0 rounds: none); short turns
    # follow the machine's drift in speed closely, many of them make the median steady
    paired_rounds: int = 5
    paired_window_s: float = 2.5
    paired_warm_s: float = 0.5


@dataclass
class MixResult:
    mix: str
    streams: list[Measured]
    slo_ms: dict[int, float]
    mixed_s: float
    probe: dict[str, Stream] = field(default_factory=dict)
    seconds: float = 0.0


INT_IDS = 1000  # integer inputs are ids: below every bench vocabulary


def make_input(spec: Mapping, batch_size: int, seed: int) -> tuple[str, np.ndarray]:
    """The first input of a model spec (``e2e.bench.models.model_specs``) as a random array
    with ``batch_size`` rows: FP32 in [0, 1), or INT64 ids below ``INT_IDS`` (token ids)."""
    first = spec["inputs"][0]
    shape = [batch_size if i == 0 and d == -1 else max(int(d), 1)
             for i, d in enumerate(first["shape"])]
    rng = np.random.default_rng(seed)
    datatype = first.get("datatype", "FP32")
    if datatype == "FP32":
        return first["name"], rng.random(shape, dtype=np.float32)
    if datatype == "INT64":
        return first["name"], rng.integers(0, INT_IDS, shape, dtype=np.int64)
    raise ValueError(f"model {spec['name']}: only FP32 and INT64 inputs are driven, "
                     f"got {datatype}")


def resolve_slos(wl: BenchWorkload, solo_p99_ms: Mapping[int, float]) -> dict[int, float]:
    """Every stream's SLO in ms where it has one (index -> ms); factor SLOs from
    ``solo_p99_ms`` (index -> the reference's solo p99), left out where that is missing."""
    out: dict[int, float] = {}
    for s in wl.streams:
        if s.slo.ms is not None:
            out[s.index] = s.slo.ms
        elif s.slo.solo_p99_factor is not None and solo_p99_ms.get(s.index) is not None:
            value = s.slo.resolve(solo_p99_ms[s.index])
            if value is not None:
                out[s.index] = value
    return out


def _label(s: BenchStream) -> str:
    return s.describe()


def stream_inputs(wl: BenchWorkload, specs: Mapping[str, Mapping]
                  ) -> dict[int, tuple[str, np.ndarray]]:
    """Each stream's input (name, array), the same on every system."""
    return {s.index: make_input(specs[s.model], s.batch_size, 100 + s.index)
            for s in wl.streams}


def closed_loop(url: str, s: BenchStream, inputs: Mapping[int, tuple[str, np.ndarray]],
                **kw: Any) -> ClosedLoop:
    """A batch stream's closed-loop clients (not started)."""
    name, x = inputs[s.index]
    clients = s.arrival.clients if s.arrival.type == "closed" else 1
    return ClosedLoop(url, s.model, x, clients, name, **kw)


def lc_streams(url: str, wl: BenchWorkload, inputs: Mapping[int, tuple[str, np.ndarray]],
               duration_s: float, seed: int, priority: int, start: float,
               timeout_s: float) -> dict[int, Stream]:
    """Every latency-critical stream of ``wl`` open-loop for ``duration_s`` from ``start``
    (a ``time.perf_counter`` value), each on a thread of its own; returns when all are
    answered."""
    out: dict[int, Stream] = {}

    def one(s: BenchStream) -> None:
        name, x = inputs[s.index]
        offsets = arrival_offsets(s.arrival, duration_s, seed, s.index)
        out[s.index] = open_loop_at(url, s.model, x, offsets, name, priority=priority,
                                    start=start, timeout_s=timeout_s)

    threads = [threading.Thread(target=one, args=(s,)) for s in wl.latency_critical]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def run_mix(
    url: str,
    wl: BenchWorkload,
    specs: Mapping[str, Mapping],
    phases: Phases,
    *,
    send_priority: bool,
    reference_slo_ms: Mapping[int, float] | None,
    apply_slos: Callable[[BenchWorkload, Mapping[int, float]], None] | None = None,
    probe: bool = False,
    log: Callable[[str], None] = print,
) -> MixResult:
    """Run the phases above; ``reference_slo_ms`` None means this system sets the SLOs."""
    began = time.monotonic()
    inputs = stream_inputs(wl, specs)
    prio = LC_PRIORITY if send_priority else 0
    measured = {s.index: Measured(s.model, s.priority.value, s.batch_size, _label(s))
                for s in wl.streams}
    result = MixResult(wl.name, [measured[s.index] for s in wl.streams], {}, 0.0)

    # warm every model (first requests open connections and touch lazily built state)
    for s in wl.streams:
        name, x = inputs[s.index]
        sequential(url, s.model, x, 0, name, warmup=2,
                   priority=prio if s.latency_critical else 0)
    if probe:
        for s in wl.latency_critical:
            if s.model not in result.probe:
                name, x = inputs[s.index]
                result.probe[s.model] = sequential(url, s.model, x, phases.probe_requests,
                                                   name, priority=prio)

    solo_p99: dict[int, float] = {}
    for s in wl.latency_critical if phases.solo_s > 0 else []:
        name, x = inputs[s.index]
        offsets = arrival_offsets(s.arrival, phases.solo_s, wl.seed, s.index)
        st = open_loop_at(url, s.model, x, offsets, name, priority=prio,
                          timeout_s=phases.lc_timeout_s)
        measured[s.index].solo_latencies_s = st.latencies
        measured[s.index].solo_window_s = phases.solo_s
        if st.latencies:
            solo_p99[s.index] = 1000.0 * percentile(st.latencies, 0.99)
    slos = resolve_slos(wl, solo_p99) if reference_slo_ms is None else dict(reference_slo_ms)
    for s in wl.latency_critical:
        measured[s.index].slo_ms = slos.get(s.index)
    if apply_slos is not None:
        apply_slos(wl, slos)
    # settle: on a server that fell behind, wait until it answers a fresh request again
    for s in wl.latency_critical[:1]:
        name, x = inputs[s.index]
        sequential(url, s.model, x, 0, name, warmup=1, priority=prio)

    loops: dict[int, ClosedLoop] = {}
    for s in wl.batch:
        loops[s.index] = closed_loop(url, s, inputs, grace_s=phases.batch_grace_s).start()
    mixed_s = wl.duration_s * phases.mixed_scale
    try:
        if loops:
            time.sleep(phases.warm_s)
        t0 = time.monotonic()
        if loops:
            time.sleep(phases.batch_only_s)
        t1 = time.monotonic()
        streams = lc_streams(url, wl, inputs, mixed_s, wl.seed, prio,
                             time.perf_counter() + 0.05, phases.lc_timeout_s)
        if not wl.latency_critical:
            time.sleep(mixed_s + 0.05)
        t1m = t1 + 0.05
        t2 = t1m + mixed_s
        if loops and time.monotonic() < t2:
            time.sleep(t2 - time.monotonic())
        t3 = t4 = time.monotonic()
        if loops and phases.batch_after_s > 0:
            t3 = t3 + 0.2  # the last latency-critical answers leave the server
            t4 = t3 + phases.batch_after_s
            time.sleep(t4 - time.monotonic())
    finally:
        for loop in loops.values():
            loop.stop()
    for i, st in streams.items():
        m = measured[i]
        m.latencies_s, m.sent, m.errors, m.window_s = st.latencies, st.sent, st.errors, mixed_s
    for i, loop in loops.items():
        m = measured[i]
        m.solo_latencies_s = loop.window(t0, t1) + loop.window(t3, t4)
        m.solo_window_s = (t1 - t0) + (t4 - t3)
        m.solo_rate_per_s = (
            completion_rate(loop.completed_at, t0, t1) * (t1 - t0)
            + (completion_rate(loop.completed_at, t3, t4) * (t4 - t3) if t4 > t3 else 0.0)
        ) / m.solo_window_s
        m.latencies_s = loop.window(t1m, t2)
        m.window_s = t2 - t1m
        m.rate_per_s = completion_rate(loop.completed_at, t1m, t2)
        m.sent = len(m.latencies_s)
        m.errors = loop.stream.errors
        s = wl.streams[i]
        if i not in slos and s.slo.solo_p99_factor is not None and m.solo_latencies_s:
            # a batch stream's factor SLO: from its batch-only p99 (on the reference system)
            slos[i] = s.slo.resolve(1000.0 * percentile(m.solo_latencies_s, 0.99)) or 0.0
        m.slo_ms = slos.get(i)
    result.slo_ms = slos
    result.mixed_s = mixed_s
    result.seconds = time.monotonic() - began
    for m in result.streams:
        s = m.summary()
        log(f"  {wl.name:<14} {m.model:<11} {m.priority:<16} p50 {s['p50_ms']} ms  "
            f"p99 {s['p99_ms']} ms  solo p99 {s['solo_p99_ms']} ms  "
            f"SLO {s['slo_ms']} met {s['slo_attainment']}  {s['throughput_per_s']}/s "
            f"(errors {m.errors})")
    return result


def reference_solo_p99_ms(result: MixResult, wl: BenchWorkload) -> dict[int, float]:
    """Each latency-critical stream's solo p99 (ms) in a mix run: on the reference system,
    the basis of every factor SLO (index -> ms)."""
    out = {}
    for s in wl.latency_critical:
        lat = result.streams[s.index].solo_latencies_s
        if lat:
            out[s.index] = 1000.0 * percentile(lat, 0.99)
    return out


def run_slo_variant(url: str, wl: BenchWorkload, specs: Mapping[str, Mapping], phases: Phases,
                    *, solo_p99_ms: Mapping[int, float], factor: float, send_priority: bool,
                    apply_slos: Callable[[BenchWorkload, Mapping[int, float]], None] | None,
                    log: Callable[[str], None] = print) -> MixResult:
    """The mix's batch-only and mixed phases again with every latency-critical SLO at
    ``factor`` x ``solo_p99_ms`` (the reference's solo p99, measured before, so that every
    system and factor shares one basis): how SLO attainment and batch throughput move with
    the slack an SLO leaves. No solo phase of its own."""
    slos = {s.index: round(factor * solo_p99_ms[s.index], 3)
            for s in wl.latency_critical if s.index in solo_p99_ms}
    return run_mix(url, wl, specs, replace(phases, solo_s=0.0, batch_after_s=0.0),
                   send_priority=send_priority, reference_slo_ms=slos, apply_slos=apply_slos,
                   probe=False, log=log)


@dataclass(frozen=True)
class PairedTarget:
    label: str
    url: str
    send_priority: bool


def paired_windows(targets: list[PairedTarget], wl: BenchWorkload, specs: Mapping[str, Mapping],
                   *, rounds: int, window_s: float, warm_s: float, lc_timeout_s: float,
                   slo_ms: Mapping[int, float] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """The mix's mixed phase on several running servers in turns: ``rounds`` rounds, in each
    one window of ``window_s`` per server (after ``warm_s`` with its batch clients going),
    while the others idle. A throughput ratio between systems measured minutes apart carries
    the machine's drift in speed; windows in turns share it. Each server has its own paused
    batch clients, so a turn costs no process start. Returns per label the batch items/s of
    each window, their median, and the latency-critical figures over all its windows."""
    inputs = stream_inputs(wl, specs)
    loops: dict[str, list[tuple[BenchStream, ClosedLoop]]] = {}
    spans: dict[str, list[tuple[float, float]]] = {t.label: [] for t in targets}
    lc: dict[str, list[float]] = {t.label: [] for t in targets}
    errors = {t.label: 0 for t in targets}
    try:
        for t in targets:
            loops[t.label] = []
            for s in wl.batch:
                loop = closed_loop(t.url, s, inputs, pausable=True).start()
                loop.pause()
                loops[t.label].append((s, loop))
        for r in range(rounds):
            for t in targets:
                for _, loop in loops[t.label]:
                    loop.resume()
                time.sleep(warm_s)
                t0 = time.monotonic()
                results = lc_streams(t.url, wl, inputs, window_s, wl.seed + 1000 * (r + 1),
                                     LC_PRIORITY if t.send_priority else 0,
                                     time.perf_counter() + 0.02, lc_timeout_s)
                remaining = t0 + 0.02 + window_s - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                spans[t.label].append((t0 + 0.02, time.monotonic()))
                for _, loop in loops[t.label]:
                    loop.pause()
                for st in results.values():
                    lc[t.label] += st.latencies
                    errors[t.label] += st.errors
    finally:
        for batch in loops.values():
            for _, loop in batch:
                loop.stop()
    out: dict[str, Any] = {}
    slo_s = min(slo_ms.values()) / 1e3 if slo_ms else None
    for t in targets:
        by_model: dict[str, list[float]] = {}
        for s, loop in loops[t.label]:
            rates = [s.batch_size * completion_rate(loop.completed_at, t0, t1)
                     for t0, t1 in spans[t.label]]
            prior = by_model.get(s.model, [0.0] * len(rates))
            by_model[s.model] = [a + b for a, b in zip(prior, rates, strict=True)]
        per_window = [round(sum(w), 3) for w in zip(*by_model.values(), strict=True)] \
            if by_model else []
        lat = lc[t.label]
        total = len(lat) + errors[t.label]
        out[t.label] = {
            "batch_items_per_s": per_window,
            "batch_items_per_s_median": round(float(np.median(per_window)), 3)
            if per_window else None,
            "batch_items_per_s_by_model": {m: [round(x, 3) for x in w]
                                           for m, w in by_model.items()},
            "lc_completed": len(lat), "lc_errors": errors[t.label],
            "lc_p50_ms": round(1e3 * percentile(lat, 0.5), 3) if lat else None,
            "lc_p99_ms": round(1e3 * percentile(lat, 0.99), 3) if lat else None,
            "slo_ms": round(slo_s * 1e3, 3) if slo_s else None,
            "slo_attainment": round(sum(1 for x in lat if x <= slo_s) / total, 6)
            if slo_s and total else None,
        }
        log(f"  paired {t.label:<24} batch items/s {per_window} (median "
            f"{out[t.label]['batch_items_per_s_median']}), LC p99 {out[t.label]['lc_p99_ms']} ms")
    return out
