"""The delay predictor: a plan's inference delay and the preemption delay it imposes.

Device model (the simulator's, and a fair model of a GPU queue): the host launches units one
after another, each launch costing ``launch_s`` of host time; the device runs them in order;
a sync point blocks the host until the device is idle and then costs ``sync_s``. A chunk of
units therefore takes ``max`` over the launch pipeline plus the sync cost, and a
latency-critical job that arrives during a chunk waits for the rest of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.job import Plan
from scheduler.profile import DeviceCosts, Profile


@dataclass(frozen=True)
class Prediction:
    """Predicted delays of one plan, in seconds.

    ``preemption_worst`` is the longest a latency-critical arrival can wait for the job to
    reach a sync point; ``preemption_expected`` is that wait for an arrival at a uniformly
    random time while the job runs.
    """

    plan: Plan
    inference_delay: float
    preemption_worst: float
    preemption_expected: float


class Predictor:
    """Predicts chunk times from a profile and the device's costs. Pure and deterministic."""

    def __init__(self, costs: DeviceCosts) -> None:
        self.costs = costs
        self._flat: dict[tuple[int, int, int], tuple[Profile, tuple[float, ...]]] = {}

    def flat_durations(
        self, profile: Profile, batch_size: int, micro_batches: int = 1
    ) -> tuple[float, ...]:
        """Unit durations of a job run as ``micro_batches`` micro-batches, in run order."""
        key = (id(profile), batch_size, micro_batches)
        cached = self._flat.get(key)
        # the entry holds its profile, so no other profile can take that id while it lives
        if cached is not None and cached[0] is profile:
            return cached[1]
        base, extra = divmod(batch_size, micro_batches)
        out: list[float] = []
        for i in range(micro_batches):
            out.extend(profile.units(base + (1 if i < extra else 0)))
        result = tuple(out)
        self._flat[key] = (profile, result)
        return result

    def forget(self, profile: Profile) -> None:
        """Drop what is cached for ``profile`` (replaced or removed: a calibrated model gets
        a new scaled profile whenever its speed moves)."""
        for key in [k for k, (p, _) in self._flat.items() if p is profile]:
            del self._flat[key]

    def speed_ratio(
        self, durations: Sequence[float], start: int, end: int, measured: float
    ) -> float | None:
        """The factor by which units ``[start, end)`` of ``durations`` would have to be
        scaled for ``chunk_time`` to equal ``measured``: the launches and the sync point are
        the device's fixed costs and do not scale with the model's speed. None where the
        fixed costs alone account for ``measured`` (launch-bound: any slower units would
        have taken as long).

        ``chunk_time`` is the sync point plus, over each unit ``k``, the latest of (the
        host time at which ``k`` is launched + the durations from ``k`` on); each term grows
        linearly with the factor, so the factor that brings their maximum to ``measured``
        is the smallest of the factors that bring each term to it.
        """
        launch, target = self.costs.launch_s, measured - self.costs.sync_s
        if target <= (end - start) * launch:
            return None  # the launches alone take that long: the units' speed is not seen
        best: float | None = None
        rest = 0.0
        for i in range(end - 1, start - 1, -1):
            rest += durations[i]
            if rest <= 0.0:
                continue
            f = (target - (i - start + 1) * launch) / rest
            if best is None or f < best:
                best = f
        return best if best is not None and best > 0.0 else None

    def chunk_time(self, durations: Sequence[float], start: int, end: int) -> float:
        """Wall time of units ``[start, end)`` launched back to back, then one sync point."""
        launch = self.costs.launch_s
        host = 0.0
        device = 0.0
        for i in range(start, end):
            host += launch
            device = (host if host > device else device) + durations[i]
        return device + self.costs.sync_s

    def first_chunk_end(self, durations: Sequence[float], start: int, budget: float) -> int:
        """The end of the longest chunk from ``start`` whose time stays within ``budget``.

        Always at least one unit: a unit longer than the budget still has to run.
        Repeating this from each end gives the plan with the fewest sync points under
        ``budget``, which is also the plan with the least inference delay under it.
        """
        launch, sync = self.costs.launch_s, self.costs.sync_s
        n = len(durations)
        host = 0.0
        device = 0.0
        i = start
        while i < n:
            host += launch
            device = (host if host > device else device) + durations[i]
            if device + sync > budget and i > start:
                return i
            i += 1
        return n

    def plan_for_budget(
        self, durations: Sequence[float], budget: float, micro_batches: int = 1, start: int = 0
    ) -> Plan:
        ends: list[int] = []
        i = start
        while i < len(durations):
            i = self.first_chunk_end(durations, i, budget)
            ends.append(i)
        return Plan(micro_batches=micro_batches, chunk_ends=tuple(ends))

    def predict(self, durations: Sequence[float], plan: Plan, start: int = 0) -> Prediction:
        times: list[float] = []
        s = start
        for e in plan.chunk_ends:
            if e <= s:
                continue
            times.append(self.chunk_time(durations, s, e))
            s = e
        total = sum(times)
        worst = max(times, default=0.0)
        expected = sum(t * t for t in times) / (2 * total) if total > 0 else 0.0
        return Prediction(plan, total, worst, expected)


def fixed_plan(total_units: int, k: int, micro_batches: int = 1) -> Plan:
    """A sync point after every ``k`` units (``k = 1``: after every unit)."""
    ends = tuple(range(k, total_units, k)) + (total_units,)
    return Plan(micro_batches=micro_batches, chunk_ends=ends)
