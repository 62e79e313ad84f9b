"""``python -m scheduler.sim --workload FILE.json --policy NAME [--json]``.

Runs a workload on the simulated device. ``--slo-factor F`` first measures every
latency-critical stream alone and sets its SLO to F x its solo p99. ``--sweep`` runs
``fixed:K`` for K = 1, 2, 4, ... and ``deft``, and prints the trade-off between batch
inference delay and latency-critical p99.

``--cpu_lane`` models the runtime's CPU lane (what it runs on a CPU with a preemptive
policy): latency-critical jobs run on a thread of their own as soon as they arrive, one at a
time, at their solo speed, and batch work pauses at every unit boundary while one is active.
A workload turns it on with ``"device": {"cpu_lane": true}``; ``--no_cpu_lane`` turns it off.
``fifo`` and ``priority`` never use the lane. ``--json`` then adds ``"cpu_lane": true``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from scheduler.policies import POLICY_NAMES, validate_policy_name
from scheduler.priority import Priority, SchedulerError
from scheduler.sim.engine import simulate
from scheduler.sim.report import SoloBaselines, summarize, table
from scheduler.sim.workload import Workload, WorkloadError, load_workload


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scheduler.sim", description=__doc__.split("\n")[0])
    p.add_argument("--workload", required=True, help="workload JSON file")
    p.add_argument(
        "--policy",
        default="deft",
        help=f"one of {', '.join(POLICY_NAMES)}; several separated by commas",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per policy")
    p.add_argument(
        "--slo-factor",
        type=float,
        default=None,
        help="set each latency-critical SLO to this multiple of its solo p99",
    )
    p.add_argument("--sweep", action="store_true", help="sweep fixed:K and compare with deft")
    lane = p.add_mutually_exclusive_group()
    lane.add_argument(
        "--cpu_lane",
        dest="cpu_lane",
        action="store_const",
        const=True,
        default=None,
        help="model the runtime's CPU lane: latency-critical jobs run on a thread of their "
        "own at solo speed and batch work pauses at every unit boundary while one is active "
        "(preemptive policies only; default: the workload's device.cpu_lane)",
    )
    lane.add_argument(
        "--no_cpu_lane",
        dest="cpu_lane",
        action="store_const",
        const=False,
        help="one simulated device queue even where the workload asks for the CPU lane",
    )
    p.add_argument(
        "--batch_slice_ms",
        type=float,
        default=None,
        help="the runtime's --batch_slice_ms: while another batch model is active, a batch "
        "chunk lasts at most this long (default: the workload's device.batch_slice_ms, or 20)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="override the workload's duration_s (simulated seconds)",
    )
    return p


def apply_slo_factor(workload: Workload, solo: SoloBaselines, factor: float) -> Workload:
    out = workload
    for i, s in enumerate(workload.streams):
        if s.priority is Priority.LATENCY_CRITICAL:
            out = out.with_slo(i, round(factor * solo.p99(i) * 1000.0, 4))
    return out


def _sweep(workload: Workload, solo: SoloBaselines, cpu_lane: bool | None = None) -> str:
    units = max(p.num_units for p in workload.models.values())
    ks = [1]
    while ks[-1] * 2 < units:
        ks.append(ks[-1] * 2)
    ks.append(units)
    rows = [
        "| policy | batch inference p50 ms | latency-critical p99 ms | SLO met | sync points |",
        "|---|---|---|---|---|",
    ]
    for name in [f"fixed:{k}" for k in ks] + ["deft"]:
        s = summarize(simulate(workload, name, cpu_lane), solo)
        batch = [st for st in s["streams"] if st["priority"] == "batch"]
        lc = [st for st in s["streams"] if st["priority"] == "latency-critical"]
        inf = max((st["inference_p50_ms"] or 0 for st in batch), default=0)
        p99 = max((st["p99_ms"] or 0 for st in lc), default=0)
        att = min((st["slo_attainment"] or 0 for st in lc), default=None)
        rows.append(
            f"| {name} | {inf:.3f} | {p99:.3f} | "
            f"{'-' if att is None else f'{100 * att:.2f}%'} | {s['sync_points']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        workload = load_workload(args.workload)
        if args.duration is not None:
            if not args.duration > 0:
                raise WorkloadError("--duration", "must be > 0")
            workload = dataclasses.replace(workload, duration_s=args.duration)
        if args.batch_slice_ms is not None:
            if not args.batch_slice_ms > 0:
                raise WorkloadError("--batch_slice_ms", "must be > 0")
            workload = dataclasses.replace(workload, batch_slice_s=args.batch_slice_ms / 1000.0)
        policies = [p.strip() for p in args.policy.split(",") if p.strip()]
        for name in policies:
            validate_policy_name(name)
    except SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    solo = SoloBaselines(workload)
    if args.slo_factor is not None:
        if args.slo_factor <= 0:
            print("error: --slo-factor must be > 0", file=sys.stderr)
            return 2
        workload = apply_slo_factor(workload, solo, args.slo_factor)
        solo = SoloBaselines(workload)
    if args.sweep:
        print(_sweep(workload, solo, args.cpu_lane))
        return 0
    if not policies:
        print("error: --policy: name at least one policy", file=sys.stderr)
        return 2
    summaries = []
    for name in policies:
        t0 = time.perf_counter()
        s = summarize(simulate(workload, name, args.cpu_lane), solo)
        elapsed = time.perf_counter() - t0
        if args.json:
            print(
                json.dumps(
                    {
                        k: s[k]
                        for k in (
                            "policy",
                            "workload",
                            "cpu_lane",
                            "streams",
                            "preemption_delay_ms",
                        )
                    }
                )
            )
        else:
            summaries.append(s)
            print(
                f"# {name}{' (CPU lane)' if s['cpu_lane'] else ''}: {s['unit_launches']} "
                f"unit launches, {s['sync_points']} sync points, {s['preemptions']} "
                f"{'batch pauses' if s['cpu_lane'] else 'preemptions'}, {elapsed:.2f} s",
                file=sys.stderr,
            )
    if summaries:
        print(table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
