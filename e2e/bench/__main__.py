"""``make bench`` / ``python -m e2e.bench [--quick] [--gpu]``: the evidence suite.

Every system (Deft with each policy, a plain kserve.ModelServer, Triton through PyTriton with
and without priority levels) runs as its own process on loopback, serving the same bench
models, and is driven through the same mixes (``e2e/bench/workloads/*.json``) by tritonclient.
Around that: the runtime's profile, the delay predictor against in-process measurements, and
the simulator replaying the runtime's profiles. Writes ``results/bench.json``, ``bench.md``
and the plots (see ``e2e/bench/README.md``), and prints the checks.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.bench import plots, report
from e2e.bench.driver import MixResult, Phases, reference_solo_p99_ms, run_mix, run_slo_variant
from e2e.bench.load import speed_ratios
from e2e.bench.report import sequence_stats
from e2e.bench.systems import (
    ServerProcess,
    SystemSpec,
    deft_server,
    kserve_server,
    select_systems,
    triton_server,
    triton_unavailable,
)
from e2e.bench.workload import BenchWorkload, load_bench_workload, to_sim_workload
from e2e.server import ROOT

RESULTS = ROOT / "e2e" / "bench" / "results"
WORKLOADS = ROOT / "e2e" / "bench" / "workloads"
DISB_GPU_MIX = ROOT / "workloads" / "disb-mix.json"
QUICK_SYSTEMS = "deft,kserve,triton:priority-levels"
# the systems the cross-system checks compare run next to each other: the machine's speed
# drifts over minutes, and a ratio of two throughputs measured ten minutes apart carries it
FULL_SYSTEMS = "deft:deft,triton,kserve,deft:*"
# on a GPU the peer is left out (its build needs a network the GPU machine may not have; it
# runs where its venv exists, with --systems), and the suite fits one ten-minute run
# (the 0.25 ms switch interval, deft:deft/switch-0.25ms, moved nothing on an H200: by name only)
GPU_SYSTEMS = "deft:deft,deft:deft/same-stream,deft:layer,kserve,deft:fifo,deft:priority"
GPU_MIXES = "pair-poisson"
# --device_bound: on a GPU the mixes above are bound by the host (HTTP, kernel launches, the
# interpreter), so preemption shows on a batch model the device bounds; deft and layer at
# the SLO factors, deft with stream priorities off and deft planning on the profiles as
# measured at load (calibration off)
GPU_DEVICE_MIXES = "encoder-poisson"
GPU_DEVICE_SYSTEMS = "deft:deft,deft:layer,deft:deft/same-stream,deft:deft/no-calibration"
# the primary mix again at other latency-critical SLOs (x the reference's solo p99), on these
# systems: how attainment and batch throughput move with the slack an SLO leaves
GPU_SLO_FACTORS = "1.1,2"
FACTOR_SYSTEMS = ("deft:deft", "deft:layer")
SIM_POLICIES = ("deft", "fifo", "priority", "layer", "fixed:4")


def log(msg: str) -> None:
    print(msg, flush=True)


STAGES: list[dict[str, Any]] = []


def stage(name: str, began: float) -> float:
    """Record how long a stage took and the machine's load average at its end (other work
    on the machine shows up here first); returns the seconds."""
    seconds = time.monotonic() - began
    try:
        load = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        load = None
    STAGES.append({"stage": name, "seconds": round(seconds, 1), "loadavg_1m": load})
    return seconds


@functools.cache  # asked for after every system (the partial results)
def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() \
        else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="the first mix, three systems, short phases (under 2 minutes)")
    p.add_argument("--gpu", action="store_true",
                   help="serve on CUDA; adds Deft with stream priorities off; writes under "
                        "results/gpu/")
    p.add_argument("--device_bound", action="store_true",
                   help=f"with --gpu: the device-bound plan (mixes {GPU_DEVICE_MIXES}; "
                        f"systems {GPU_DEVICE_SYSTEMS}; writes under results/gpu-device/)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the servers run (default: cuda with --gpu, else cpu); "
                        "--gpu --device cpu runs the GPU plan on the CPU, to try it out")
    p.add_argument("--systems", default=None,
                   help="comma-separated: deft:*, triton, kserve, deft:POLICY, "
                        f"triton:priority-levels, triton:none (default: all; quick: "
                        f"{QUICK_SYSTEMS}; --gpu: {GPU_SYSTEMS})")
    p.add_argument("--mixes", default=None,
                   help="comma-separated workload files or names in e2e/bench/workloads, "
                        f"or 'all' (default: all; quick: the first; --gpu: {GPU_MIXES})")
    p.add_argument("--peer_python", type=Path, default=ROOT / ".peer-venv" / "bin" / "python",
                   help="the Python of the Triton peer venv (make peer-venv)")
    p.add_argument("--slo_factors", default=None, metavar="F,F",
                   help="also run the first mix on deft:deft and deft:layer with the "
                        "latency-critical SLO at each factor x the reference's solo p99 "
                        f"(default with --gpu: {GPU_SLO_FACTORS}; 'none': off)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--model_dir", type=Path, default=None,
                   help="bench model repository (default: written under ~/.cache/deft)")
    p.add_argument("--no_predictor", action="store_true", help="skip predictor accuracy")
    return p


def find_mixes(spec: str | None, quick: bool) -> list[Path]:
    """The mix files ``--mixes`` names: every mix in ``WORKLOADS`` by default (``all``), the
    first with ``quick``; a name may also be one of the GPU mixes (``WORKLOADS/gpu``)."""
    every = sorted(WORKLOADS.glob("*.json"))
    if not spec:
        return every[:1] if quick else every
    if spec.strip() == "all":
        return every
    named = every + sorted((WORKLOADS / "gpu").glob("*.json"))
    out = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        path = Path(name)
        if not path.is_file():
            hits = [p for p in named if p.stem == name or p.stem.split("-", 1)[-1] == name]
            if not hits:
                raise SystemExit(f"no mix {name!r}; choose from {[p.stem for p in named]}")
            path = hits[0]
        out.append(path)
    return out


def profile_models(model_dir: Path, out: Path, cache: Path, device: str, quick: bool) -> dict:
    """``python -m runtime profile`` into a fresh cache that every Deft server then uses."""
    repeats = "2" if quick else "5"
    cmd = [sys.executable, "-m", "runtime", "profile", "--model_dir", str(model_dir),
           "--out", str(out), "--cache_dir", str(cache / "profiles"), "--device", device,
           "--repeats", repeats, "--warmup", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"profiling failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def last_profile_clean(bench_json: Path) -> bool:
    """Whether the last run's profile agreed with whole-model runs (quick runs reuse it)."""
    try:
        attempts = json.loads(bench_json.read_text()).get("profile_attempts") or []
        ratios = attempts[-1]["measured_over_profile"]
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return False
    return bool(ratios) and all(0.67 <= r <= 1.5 for r in ratios.values())


def checked_profile(model_dir: Path, out: Path, cache: Path, device: str, quick: bool,
                    reuse: bool, tries: int = 2) -> tuple[dict, list[dict[str, Any]]]:
    """The runtime's profile, measured again (up to ``tries`` times) while a model's whole
    run disagrees with its profile by more than 2x: a profile measured while other work held
    the cores would mislead the runtime under test, not only the predictor check. Every
    attempt is recorded."""
    from e2e.bench.accuracy import profile_agreement

    attempts: list[dict[str, Any]] = []
    if reuse:
        return json.loads(out.read_text()), [{"attempt": 0, "reused": True,
                                              "measured_over_profile": {}, "kept": True}]
    for attempt in range(1, tries + 1):
        shutil.rmtree(cache / "profiles", ignore_errors=True)
        profile = profile_models(model_dir, out, cache, device, quick)
        ratios = profile_agreement(model_dir, profile["models"], cache / "profiles", device)
        ok = all(0.5 <= r <= 2.0 for r in ratios.values())
        attempts.append({"attempt": attempt, "measured_over_profile": ratios, "kept": ok})
        if ok:
            break
        log(f"profile: whole-model runs disagree with the profile ({ratios}); "
            "the machine was probably busy, profiling again")
    else:
        attempts[-1]["kept"] = True
        log("profile: still disagreeing after retries; keeping the last one (see bench.json)")
    return profile, attempts


class DeftPriorities:
    """Writes Deft's priorities file for a mix's SLOs and waits until the runtime has read
    it (it polls every 0.2 s here)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("models: {}\n")

    def __call__(self, wl: BenchWorkload, slos: dict[int, float]) -> None:
        lines = ["models:"]
        seen: dict[str, float] = {}
        for s in wl.latency_critical:
            if s.index in slos:
                seen[s.model] = min(slos[s.index], seen.get(s.model, float("inf")))
        for model, slo in seen.items():
            lines.append(f"  {model}: {{priority: latency-critical, slo_ms: {slo:.3f}}}")
        self.path.write_text("\n".join(lines if seen else ["models: {}"]) + "\n")
        time.sleep(0.7)


def serving_overhead(server: ServerProcess, in_process: Any, spec: dict, batch_size: int,
                     quick: bool) -> dict[str, Any]:
    """The batch model's throughput over HTTP against its compute throughput in this process,
    in alternating windows on the reference server before its mixes run."""
    from e2e.bench.driver import make_input
    from e2e.bench.load import alternating_throughput

    name, x = make_input(spec, batch_size, seed=7)
    return alternating_throughput(server.url, spec["name"], x, name, in_process,
                                  windows=2 if quick else 3, window_s=1.0 if quick else 3.5,
                                  warm_s=0.5 if quick else 1.0)


def start_system(spec: SystemSpec, model_dir: Path, specs: dict, logs: Path, cache: Path,
                 peer_python: Path, device: str) -> tuple[ServerProcess, DeftPriorities | None]:
    slug = spec.label.replace(":", "-").replace("/", "-")
    models = list(specs)
    if spec.system == "deft":
        prio = DeftPriorities(logs / f"priorities-{slug}.yaml")
        server = deft_server(model_dir, spec.policy, prio.path, logs / f"{slug}.log", models,
                             device=device, variant=spec.variant)
        server.env["DEFT_CACHE_DIR"] = str(cache)
        return server, prio
    if spec.system == "kserve":
        return kserve_server(model_dir, logs / f"{slug}.log", models, device), None
    levels = 2 if spec.policy == "priority-levels" else 0
    return triton_server(peer_python, specs, levels, logs / f"{slug}.log", device), None


def parse_factors(text: str | None) -> list[float]:
    """``--slo_factors``: comma-separated factors above 1 (``none`` or empty: none)."""
    if not text or text.strip().lower() == "none":
        return []
    out = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--slo_factors: {part!r} is not a number") from None
        if not value > 1.0:
            raise ValueError(f"--slo_factors: {part} must be above 1 (x the solo p99)")
        out.append(value)
    return out


def run_system(spec: SystemSpec, server: ServerProcess, prio: DeftPriorities | None,
               mixes: list[BenchWorkload], specs: dict, phases: Phases,
               slos: dict[str, dict[int, float]], factors: list[float] | None = None,
               ref_solo: dict[str, dict[int, float]] | None = None,
               ) -> tuple[dict[str, Any], list[MixResult]]:
    entry: dict[str, Any] = {"system": spec.system, "policy": spec.policy, "label": spec.label,
                             "variant": spec.variant, "startup_s": round(server.started_s, 1),
                             "probe": {}, "mixes": []}
    results = []
    for i, wl in enumerate(mixes):
        ref = None if spec.reference else slos.get(wl.name)
        # the primary mix (its figures make the checks) measures batch-only before and after;
        # on it the reference system's solo phase, whose p99 sets every system's SLO, is longer
        mix_phases = phases
        if i == 0:
            if phases.primary_batch_after:
                mix_phases = replace(phases, batch_after_s=phases.batch_only_s)
            if spec.reference:
                mix_phases = replace(mix_phases,
                                     solo_s=max(phases.solo_s, phases.reference_solo_s))
        res = run_mix(server.url, wl, specs, mix_phases, send_priority=spec.priorities,
                      reference_slo_ms=ref, apply_slos=prio, probe=(i == 0), log=log)
        if spec.reference or wl.name not in slos:
            slos.setdefault(wl.name, {k: v for k, v in res.slo_ms.items()})
        if spec.reference and ref_solo is not None:
            ref_solo[wl.name] = reference_solo_p99_ms(res, wl)
        mix_entry: dict[str, Any] = {"mix": wl.name, "seconds": round(res.seconds, 1),
                                     "streams": [m.summary() for m in res.streams]}
        if spec.system == "deft":
            # how fast the models ran against their profiles, as the runtime measured it
            mix_entry["speed_ratio"] = speed_ratios(server.url)
        entry["mixes"].append(mix_entry)
        for model, st in res.probe.items():
            entry["probe"][model] = sequence_stats(st.latencies)
        results.append(res)
    solo = (ref_solo or {}).get(mixes[0].name) if mixes else None
    if factors and solo and spec.label in FACTOR_SYSTEMS:
        wl = mixes[0]
        entry["slo_factors"] = []
        for factor in factors:
            log(f"{spec.label}: {wl.name} with the SLO at {factor} x solo p99")
            res = run_slo_variant(server.url, wl, specs, phases, solo_p99_ms=solo,
                                  factor=factor, send_priority=spec.priorities,
                                  apply_slos=prio, log=log)
            entry["slo_factors"].append({
                "mix": wl.name, "factor": factor, "seconds": round(res.seconds, 1),
                "solo_p99_ms": {str(k): round(v, 3) for k, v in solo.items()},
                "streams": [m.summary() for m in res.streams]})
    return entry, results


def run_paired(held: list[tuple[SystemSpec, ServerProcess]], wl: BenchWorkload, specs: dict,
               phases: Phases, slos: dict[str, dict[int, float]]) -> dict[str, Any]:
    """The primary mix's mixed phase on Deft's reference and the Triton variants in turns
    (``driver.paired_windows``); the batch throughput check compares these."""
    from e2e.bench.driver import PairedTarget, paired_windows

    t = time.monotonic()
    log(f"paired windows: {', '.join(spec.label for spec, _ in held)}, "
        f"{phases.paired_rounds} rounds of {phases.paired_window_s} s each")
    targets = [PairedTarget(spec.label, server.url, spec.priorities) for spec, server in held]
    systems = paired_windows(targets, wl, specs, rounds=phases.paired_rounds,
                             window_s=phases.paired_window_s, warm_s=phases.paired_warm_s,
                             lc_timeout_s=phases.lc_timeout_s, slo_ms=slos.get(wl.name),
                             log=log)
    stage("paired", t)
    return {"mix": wl.name, "rounds": phases.paired_rounds, "window_s": phases.paired_window_s,
            "warm_s": phases.paired_warm_s, "systems": systems}


def scale_profiles(profiles: dict[str, dict[str, list[float]]],
                   ratios: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    """``profiles`` (model -> the profiler's shape, µs) with each model's durations scaled by
    its ratio in ``ratios`` (models without one as they are)."""
    return {name: {b: [round(d * ratios.get(name, 1.0), 3) for d in units]
                   for b, units in profile.items()} for name, profile in profiles.items()}


def _replay_row(policy: str, sim: dict[str, Any], measured: dict[str, dict[str, Any]],
                lc_index: int) -> dict[str, Any] | None:
    """The replay of ``policy`` against its measured LC stream, with the transport time:
    what the simulated device leaves out (HTTP, decoding, the client, the OS) at the
    percentile being predicted, the server's solo p99 minus the simulated one."""
    st = measured.get(policy)
    sim_solo = sim["solo_p99_ms"].get(lc_index)
    transport = (st["solo_p99_ms"] - sim_solo) if st and st.get("solo_p99_ms") \
        is not None and sim_solo is not None else None
    rows = report.replay_rows({policy: sim["policies"][policy]}, measured, transport,
                              lc_index)
    return rows[0] if rows else None


def simulator_section(mixes: list[BenchWorkload], profile: dict, slos: dict, costs: tuple,
                      runs: list[dict], raw: Path, quick: bool,
                      device_type: str = "cpu") -> dict[str, Any]:
    from e2e.bench.accuracy import fixed_k_sweep, simulate_mix

    device = {"launch_overhead_us": costs[0], "sync_overhead_us": costs[1]}
    deft_runs = {r["policy"]: r for r in runs if r["system"] == "deft" and not r["variant"]}
    out: dict[str, Any] = {"costs_us": device, "replay": {}, "sweeps": {}}
    sim_files = {}
    for wl in mixes:
        mix_slos = slos.get(wl.name)
        if mix_slos is None:
            continue
        profiles = {name: m["profile"] for name, m in profile["models"].items()}
        # On a CPU the runtime runs its CPU lane for the preemptive policies: the workload
        # says so, and the simulator models it (fifo and priority ignore it, as the runtime).
        lane = device_type == "cpu" and "deft" in deft_runs
        sim_wl = to_sim_workload(wl, profiles, mix_slos, device, cpu_lane=lane)
        path = raw / f"sim-{wl.name}.json"
        path.write_text(json.dumps(sim_wl, indent=1) + "\n")
        sim_files[wl.name] = sim_wl
        policies = [p for p in SIM_POLICIES if p in deft_runs] or ["deft"]
        sim = simulate_mix(sim_wl, policies)
        lc_index = next(s.index for s in wl.streams if s.latency_critical)
        measured = {}
        rows = []
        for policy, run in deft_runs.items():
            st = report.lc_stream(run, wl.name)
            if st is not None:
                measured[policy] = st
        for policy in policies:
            # each policy's replay runs the profiles at the speed the runtime measured its
            # chunks at in that run (deft_profile_speed_ratio); the start-up profiles' replay
            # is kept beside it
            ratios = report.speed_ratios(deft_runs.get(policy), wl.name)
            scaled = sim
            if ratios:
                scaled = simulate_mix(to_sim_workload(
                    wl, scale_profiles(profiles, ratios), mix_slos, device, cpu_lane=lane),
                    [policy])
            row = _replay_row(policy, scaled, measured, lc_index)
            if row is None:
                continue
            plain = _replay_row(policy, sim, measured, lc_index) if ratios else row
            row["speed_ratio"] = ratios
            row["startup_profile_error"] = plain["error"] if plain else None
            rows.append(row)
        out["replay"][wl.name] = {"workload": str(path.relative_to(ROOT)) if
                                  path.is_relative_to(ROOT) else str(path), "rows": rows,
                                  "cpu_lane": lane, "simulated": sim["policies"]}
        log(f"  simulator {wl.name}: " + ", ".join(
            f"{r['policy']} {r['sim_p99_ms']}+{r['transport_ms']} vs {r['measured_p99_ms']} ms"
            for r in rows))
    if sim_files:
        first = next(iter(sim_files))
        # the trade-off of sync intervals is a property of one shared queue: swept without
        # the CPU lane (with it every K gives the lane's solo latency)
        single = {**sim_files[first], "device": {
            k: v for k, v in sim_files[first]["device"].items() if k != "cpu_lane"}}
        out["sweeps"][f"runtime profiles ({first}, one queue)"] = fixed_k_sweep(single)
    if DISB_GPU_MIX.is_file():
        disb = json.loads(DISB_GPU_MIX.read_text())
        disb["duration_s"] = 4 if quick else 10
        out["sweeps"]["DISB kernel statistics (workloads/disb-mix.json, GPU costs)"] = \
            fixed_k_sweep(disb)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    began = time.monotonic()
    quick, gpu = args.quick, args.gpu
    device = args.device or ("cuda" if gpu else "cpu")
    bound = args.device_bound
    if bound and not gpu:
        print("error: --device_bound is a plan of --gpu", file=sys.stderr)
        return 2
    # a quick run is a smoke test: it never replaces the full run's evidence in results/
    out: Path = args.out or (RESULTS / ("gpu-device" if bound else "gpu") if gpu
                             else RESULTS / "quick" if quick else RESULTS)
    raw, logs, cache = out / "raw", out / "logs", out / "cache"
    for d in (out, raw, logs):
        d.mkdir(parents=True, exist_ok=True)
    # A fresh profile every full run: a profile cached while the machine was busy would
    # mislead the runtime, the predictor and the simulator alike. Quick runs reuse the last.
    reuse = quick and (cache / "profiles").is_dir() and (raw / "profile.json").is_file() \
        and last_profile_clean(out / "bench.json")
    if not reuse:
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
    try:
        default = GPU_DEVICE_SYSTEMS if bound else \
            QUICK_SYSTEMS + (",deft:deft/same-stream" if gpu else "") if quick \
            else GPU_SYSTEMS if gpu else FULL_SYSTEMS
        systems = select_systems(args.systems or default, gpu)
        factors = parse_factors(args.slo_factors if args.slo_factors is not None
                                else GPU_SLO_FACTORS if gpu else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mix_spec = args.mixes or (GPU_DEVICE_MIXES if bound else
                              GPU_MIXES if gpu and not quick else None)
    mixes = [load_bench_workload(p) for p in find_mixes(mix_spec, quick)]
    phases = Phases(solo_s=1.5, reference_solo_s=2.0, batch_only_s=1.5, warm_s=0.8,
                    mixed_scale=0.3, probe_requests=30, lc_timeout_s=10.0,
                    paired_rounds=0, primary_batch_after=False) if quick else Phases()

    from e2e.bench.models import model_specs, subset_repository, write_bench_repository

    model_dir = args.model_dir or write_bench_repository(
        models={m for wl in mixes for m in wl.models})
    specs = model_specs(model_dir)
    for wl in mixes:
        missing = sorted(set(wl.models) - set(specs))
        if missing:
            print(f"error: mix {wl.name} names models not in {model_dir}: {missing}",
                  file=sys.stderr)
            return 2
    # only the models the chosen mixes use: served, profiled and measured
    model_dir = subset_repository(model_dir, {m for wl in mixes for m in wl.models},
                                  cache / "models")
    specs = model_specs(model_dir)
    log(f"bench: {len(systems)} systems x {len(mixes)} mixes on {device}, models in "
        f"{model_dir}")

    t = time.monotonic()
    profile, attempts = checked_profile(model_dir, raw / "profile.json", cache, device, quick,
                                        reuse)
    note = ", reused from the last run" if reuse else ""
    log(f"profile: {', '.join(profile['models'])} ({stage('profile', t):.0f} s{note})")
    predictor: dict[str, Any] = {}
    if not args.no_predictor:
        from e2e.bench.accuracy import predictor_accuracy

        t = time.monotonic()
        predictor = predictor_accuracy(
            model_dir, repeats=2 if quick else 5, preemption_jobs=1 if quick else 4,
            batch_sizes=(lambda name, s: [s[-1]]) if quick else None,
            cache_dir=cache / "profiles", device=device, log=log)
        log(f"predictor: median error {predictor['median_error']} "
            f"({stage('predictor', t):.0f} s)")

    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    slos: dict[str, dict[int, float]] = {}
    ref_solo: dict[str, dict[int, float]] = {}
    latencies: dict[str, dict[str, list[float]]] = {wl.name: {} for wl in mixes}
    triton_reason = triton_unavailable(args.peer_python) \
        if any(s.system == "triton" for s in systems) else None
    if triton_reason:
        log(f"triton: skipped: {triton_reason}")
    in_process = overhead = None
    batch_stream = next((s for s in mixes[0].streams if not s.latency_critical), None)
    if batch_stream is not None and any(s.reference for s in systems):
        from e2e.bench.accuracy import InProcess

        in_process = InProcess(model_dir, batch_stream.model, batch_stream.batch_size,
                               cache / "profiles", device)
    # Deft's reference and the Triton variants stay up after their own runs, for the paired
    # windows that follow the last of them (only with ``paired_rounds``)
    runnable = [s for s in systems if not (s.system == "triton" and triton_reason)]
    pair_labels = [s.label for s in runnable if s.reference or s.system == "triton"] \
        if phases.paired_rounds and any(s.reference for s in runnable) else []
    if len(pair_labels) < 2:
        pair_labels = []
    paired: dict[str, Any] = {}
    held: list[tuple[SystemSpec, ServerProcess]] = []
    with contextlib.ExitStack() as holding:
        for spec in systems:
            if spec.system == "triton" and triton_reason:
                skipped.append({"label": spec.label, "reason": triton_reason})
                continue
            t = time.monotonic()
            log(f"{spec.label}: starting")
            try:
                server, prio = start_system(spec, model_dir, specs, logs, cache,
                                            args.peer_python, device)
                with contextlib.ExitStack() as own:
                    (holding if spec.label in pair_labels else own).enter_context(server)
                    log(f"{spec.label}: ready in {server.started_s:.1f} s")
                    if spec.reference and in_process is not None:
                        overhead = serving_overhead(server, in_process,
                                                    specs[batch_stream.model],
                                                    batch_stream.batch_size, quick)
                        log(f"{spec.label}: {batch_stream.model} items/s over HTTP "
                            f"{overhead['http_items_per_s']}, in process "
                            f"{overhead['in_process_items_per_s']}: ratio {overhead['ratio']}")
                    entry, results = run_system(spec, server, prio, mixes, specs, phases, slos,
                                                factors, ref_solo)
            except (RuntimeError, TimeoutError, OSError) as exc:
                log(f"{spec.label}: FAILED: {str(exc)[-1500:]}")
                skipped.append({"label": spec.label, "reason": f"failed: {str(exc)[-300:]}"})
                save_partial(out / "bench.partial.json", device, runs, skipped, predictor,
                             attempts)
                if spec.label in pair_labels:
                    pair_labels.remove(spec.label)
                continue
            runs.append(entry)
            if spec.label in pair_labels:
                held.append((spec, server))
            for res in results:
                lc = next((m for m in res.streams if m.priority == "latency-critical"), None)
                if lc is not None:
                    latencies[res.mix][spec.label] = [round(x * 1e3, 3) for x in lc.latencies_s]
            log(f"{spec.label}: done in {stage(spec.label, t):.0f} s")
            save_partial(out / "bench.partial.json", device, runs, skipped, predictor, attempts)
            if held and spec.label == pair_labels[-1]:
                if len(held) >= 2 and held[0][0].reference:
                    paired = run_paired(held, mixes[0], specs, phases, slos)
                holding.close()
                held.clear()
        if len(held) >= 2 and held[0][0].reference:  # the last of them failed to run
            paired = run_paired(held, mixes[0], specs, phases, slos)

    costs = (predictor.get("costs_us", {}).get("launch"), predictor.get("costs_us", {})
             .get("sync")) if predictor else None
    if costs is None or None in costs:
        from e2e.bench.accuracy import runtime_costs_us

        costs = runtime_costs_us(device)
    t = time.monotonic()
    simulator = simulator_section(mixes, profile, slos, costs, runs, raw, quick, device)
    log(f"simulator: {stage('simulator', t):.0f} s")

    legacy = legacy_inputs(mixes[0], profile, predictor)
    if overhead is not None:
        legacy["serving_overhead"] = overhead
    result: dict[str, Any] = {
        "machine": machine(device),
        "device": device,
        "gpu": gpu,
        "device_bound": bound,
        "quick": quick,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mixes": [{"name": wl.name, "description": wl.description, "duration_s": wl.duration_s,
                   "mixed_s": wl.duration_s * phases.mixed_scale,
                   "streams": [s.describe() for s in wl.streams],
                   "slo_ms": {str(k): v for k, v in slos.get(wl.name, {}).items()}}
                  for wl in mixes],
        "phases": {"solo_s": phases.solo_s, "reference_solo_s": phases.reference_solo_s,
                   "paired_rounds": phases.paired_rounds,
                   "paired_window_s": phases.paired_window_s,
                   "batch_only_s": phases.batch_only_s,
                   "warm_s": phases.warm_s, "mixed_scale": phases.mixed_scale},
        "slo_factors": factors,
        "systems": runs,
        "paired": paired,
        "skipped": skipped,
        "legacy": legacy,
        "stages": STAGES,
        "profile_attempts": attempts,
        "predictor": predictor,
        "simulator": simulator,
    }
    (raw / "latencies.json").write_text(json.dumps(latencies))
    # the measurements are written first: a failure below must not lose them
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench.partial.json").unlink(missing_ok=True)
    result["checks"] = report.checks(result)
    try:
        result["plots"] = make_plots(out, result, latencies)
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the pictures
        log(f"plots: FAILED: {type(exc).__name__}: {exc}")
        result["plots"] = []
    result["seconds"] = round(time.monotonic() - began, 1)
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    md = report.markdown(result)
    (out / "bench.md").write_text(md)
    log("")
    log(md.split("## Mixes")[0])
    log("\n".join(md.split("## Mixes")[1:2]).split("## Predictor")[0][:6000])
    log(f"bench: wrote {out / 'bench.json'}, {out / 'bench.md'} and "
        f"{len(result['plots'])} plots in {result['seconds']:.0f} s")
    return 0


def save_partial(path: Path, device: str, runs: list, skipped: list, predictor: dict,
                 attempts: Any) -> None:
    """What the suite has measured so far, after each system: a run cut short (a time limit
    on a lent machine, say) keeps the systems it finished. The whole run removes it."""
    partial = {"partial": True, "machine": machine(device), "device": device,
               "systems": runs, "skipped": skipped, "stages": STAGES,
               "profile_attempts": attempts, "predictor": predictor}
    path.write_text(json.dumps(partial, indent=1) + "\n")


def legacy_inputs(primary: BenchWorkload, profile: dict, predictor: dict) -> dict[str, Any]:
    """What the earlier checks compare against: the device share the latency-critical stream
    leaves (its rate x its compute time) and the batch model's in-process throughput.
    Compute times are measured in-process where the predictor section timed them, else the
    profile's sum."""
    inf = {(r["model"], r["batch_size"], r["plan"]): r["measured_ms"] / 1e3
           for r in predictor.get("inference", [])}

    def compute_s(model: str, bs: int) -> float | None:
        if (model, bs, "one chunk") in inf:
            return inf[(model, bs, "one chunk")]
        row = (profile.get("models", {}).get(model, {}).get("profile") or {}).get(str(bs))
        return sum(row) / 1e6 if row else None

    out: dict[str, Any] = {}
    lc = next((s for s in primary.streams if s.latency_critical), None)
    if lc is not None and lc.arrival.type in ("poisson", "periodic"):
        t = compute_s(lc.model, lc.batch_size)
        if t is not None:
            out["device_share_left"] = round(max(0.0, 1.0 - lc.arrival.rate_per_s * t), 4)
    b = next((s for s in primary.streams if not s.latency_critical), None)
    if b is not None:
        t = compute_s(b.model, b.batch_size)
        if t:
            out["classifier_in_process_items_per_s"] = round(b.batch_size / t, 3)
    return out


def make_plots(out: Path, result: dict[str, Any], latencies: dict) -> list[str]:
    written = []
    slo = {}
    for m in result["mixes"]:
        if m["slo_ms"]:
            slo[m["name"]] = min(m["slo_ms"].values())
    cdfs = {mix: v for mix, v in latencies.items() if v}
    if cdfs:
        written.append(plots.lc_cdfs(cdfs, slo, out / "lc_cdf.png"))
    sweeps = (result.get("simulator") or {}).get("sweeps") or {}
    if sweeps:
        written.append(plots.fixed_k_tradeoff(sweeps, out / "fixed_k_tradeoff.png"))
    retained = {}
    for run in result["systems"]:
        retained[run["label"]] = {}
        for m in run["mixes"]:
            mixed = report.batch_items_per_s(run, m["mix"])
            alone = report.batch_items_per_s(run, m["mix"], solo=True)
            retained[run["label"]][m["mix"]] = mixed / alone if mixed and alone else None
    if retained:
        written.append(plots.batch_retained(retained, out / "batch_retained.png"))
    rows = (result.get("predictor") or {}).get("inference")
    if rows:
        written.append(plots.predictor_scatter(rows, out / "predictor.png"))
    return [p.name for p in written]


if __name__ == "__main__":
    sys.exit(main())
