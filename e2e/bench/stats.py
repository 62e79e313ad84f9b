"""Statistics of measured streams, in the simulator's ``--json`` stream fields
(docs/simulator.md). Pure.

Percentiles are nearest-rank, as in the simulator (``scheduler.sim.engine.percentile``), so a
measured p99 and a simulated one are read the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 1]; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float | None, digits: int = 3) -> float | None:
    """Seconds to rounded milliseconds; None for None or NaN."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000.0, digits)


def attainment(latencies_s: Sequence[float], sent: int, slo_ms: float | None) -> float | None:
    """Share of ``sent`` requests answered within ``slo_ms`` (errors and requests never
    answered count as misses); None without an SLO or without requests."""
    if slo_ms is None or sent <= 0:
        return None
    ok = sum(1 for x in latencies_s if x * 1000.0 <= slo_ms)
    return round(ok / sent, 6)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None where either is missing or ``b`` is not positive."""
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


@dataclass
class Measured:
    """What one stream of a mix measured on one system."""

    model: str
    priority: str
    batch_size: int
    arrival: str
    latencies_s: list[float] = field(default_factory=list)
    sent: int = 0
    errors: int = 0
    window_s: float = 0.0
    solo_latencies_s: list[float] = field(default_factory=list)
    solo_window_s: float = 0.0
    slo_ms: float | None = None
    rate_per_s: float | None = None  # a closed loop's completion rate (see completion_rate)
    solo_rate_per_s: float | None = None

    def summary(self) -> dict[str, Any]:
        """The simulator's stream fields, and a few more the report uses."""
        completed = len(self.latencies_s)
        tput = self.rate_per_s
        if tput is None and self.window_s > 0:
            tput = completed / self.window_s
        solo_tput = self.solo_rate_per_s
        if solo_tput is None and self.solo_window_s > 0:
            solo_tput = len(self.solo_latencies_s) / self.solo_window_s
        return {
            "model": self.model,
            "priority": self.priority,
            "completed": completed,
            "p50_ms": ms(percentile(self.latencies_s, 0.5)),
            "p99_ms": ms(percentile(self.latencies_s, 0.99)),
            "solo_p99_ms": ms(percentile(self.solo_latencies_s, 0.99)),
            "slo_attainment": attainment(self.latencies_s, self.sent, self.slo_ms),
            "throughput_per_s": round(tput, 4) if tput is not None else None,
            "batch_size": self.batch_size,
            "arrival": self.arrival,
            "sent": self.sent,
            "errors": self.errors,
            "slo_ms": self.slo_ms,
            "solo_p50_ms": ms(percentile(self.solo_latencies_s, 0.5)),
            "solo_throughput_per_s": round(solo_tput, 4) if solo_tput is not None else None,
            "retained": _round(ratio(tput, solo_tput), 4),
        }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def completion_rate(completed_at: Sequence[float], t0: float, t1: float) -> float:
    """Completions per second of a closed loop between ``t0`` and ``t1``: with three or more
    completions, (n - 1) over the time from the first to the last, which does not round to
    whole completions the way n / (t1 - t0) does on a window a few completions long."""
    inside = sorted(t for t in completed_at if t0 <= t <= t1)
    n = len(inside)
    if n >= 3 and inside[-1] > inside[0]:
        return (n - 1) / (inside[-1] - inside[0])
    return n / (t1 - t0) if t1 > t0 else math.nan


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and their cumulative fractions (for CDF plots)."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def relative_error(predicted: float, measured: float) -> float:
    """``|predicted - measured| / measured``; NaN where ``measured`` is not positive."""
    if not measured > 0:
        return math.nan
    return abs(predicted - measured) / measured


def median(values: Sequence[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan
