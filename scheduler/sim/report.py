"""Summaries of simulated runs: the ``--json`` object of docs/simulator.md and a readable table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from scheduler.sim.engine import RunResult, percentile, simulate
from scheduler.sim.workload import Workload


def _ms(x: float) -> float | None:
    return None if math.isnan(x) else round(x * 1000.0, 4)


class SoloBaselines:
    """Each stream's p99 when it runs alone on the same device (under ``fifo``: no sync
    points but the one that ends each job). Computed once per stream and reused."""

    def __init__(
        self, workload: Workload, run: Callable[[Workload, str], RunResult] = simulate
    ) -> None:
        self.workload = workload
        self._run = run
        self._p99: dict[int, float] = {}

    def p99(self, index: int) -> float:
        if index not in self._p99:
            result = self._run(self.workload.only(index), "fifo")
            self._p99[index] = percentile(result.records[0].latencies, 0.99)
        return self._p99[index]


def summarize(result: RunResult, solo: SoloBaselines) -> dict[str, Any]:
    streams = []
    pds: list[float] = []
    for i, rec in enumerate(result.records):
        s = rec.stream
        answered = len(rec.latencies) + rec.rejected + rec.failed
        attainment = None
        if s.slo_ms is not None:
            ok = sum(1 for x in rec.latencies if x * 1000.0 <= s.slo_ms)
            attainment = round(ok / answered, 6) if answered else None
        pds.extend(rec.preemption_delays)
        streams.append(
            {
                "model": s.model,
                "priority": s.priority.value,
                "completed": len(rec.latencies),
                "p50_ms": _ms(percentile(rec.latencies, 0.5)),
                "p99_ms": _ms(percentile(rec.latencies, 0.99)),
                "solo_p99_ms": _ms(solo.p99(i)),
                "slo_attainment": attainment,
                "throughput_per_s": round(len(rec.latencies) / result.workload.duration_s, 4),
                "slo_ms": s.slo_ms,
                "inference_p50_ms": _ms(percentile(rec.inference, 0.5)),
                "rejected": rec.rejected,
            }
        )
    return {
        "policy": result.policy,
        "workload": result.workload.name,
        "cpu_lane": result.cpu_lane,
        "streams": streams,
        "preemption_delay_ms": {
            "p50": _ms(percentile(pds, 0.5)),
            "p99": _ms(percentile(pds, 0.99)),
        },
        "unit_launches": result.launches,
        "sync_points": result.syncs,
        "preemptions": result.preemptions,
        "lost": result.lost,
    }


def table(summaries: list[dict[str, Any]]) -> str:
    """A markdown table: one row per (policy, stream)."""
    head = (
        "| policy | model | class | done | p50 ms | p99 ms | solo p99 ms | SLO ms | "
        "SLO met | infer p50 ms | tput/s |"
    )
    lines = [head, "|" + "---|" * 11]

    def f(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"
        return str(x)

    for s in summaries:
        for st in s["streams"]:
            att = st["slo_attainment"]
            lines.append(
                "| "
                + " | ".join(
                    [
                        s["policy"],
                        st["model"],
                        st["priority"],
                        f(st["completed"]),
                        f(st["p50_ms"]),
                        f(st["p99_ms"]),
                        f(st["solo_p99_ms"]),
                        f(st["slo_ms"]),
                        "-" if att is None else f"{100 * att:.2f}%",
                        f(st["inference_p50_ms"]),
                        f(st["throughput_per_s"]),
                    ]
                )
                + " |"
            )
    return "\n".join(lines)
