"""Model profiles (unit durations per batch size) and device costs."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler.priority import SchedulerError

if TYPE_CHECKING:
    from scheduler.job import Job


class InvalidProfile(SchedulerError):
    """A profile that cannot be used (empty, ragged, negative durations)."""


@dataclass(frozen=True)
class DeviceCosts:
    """Host-side costs of the device, in seconds: each unit launch, and each sync point."""

    launch_s: float = 0.0
    sync_s: float = 0.0

    @classmethod
    def from_us(cls, launch_us: float, sync_us: float) -> DeviceCosts:
        return cls(launch_s=launch_us * 1e-6, sync_s=sync_us * 1e-6)


@dataclass(frozen=True)
class Profile:
    """Durations, in seconds, of a model's units in execution order, per profiled batch size.

    Every batch size has the same number of units. Sizes not profiled are interpolated
    linearly between the nearest profiled sizes; beyond the largest they are extrapolated
    along the last segment (proportionally where only one size is known), and below the
    smallest they scale proportionally with the batch size.
    """

    by_batch: Mapping[int, tuple[float, ...]]
    _sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _cache: dict[int, tuple[float, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if not self.by_batch:
            raise InvalidProfile("a profile needs at least one batch size")
        lengths = {len(v) for v in self.by_batch.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise InvalidProfile("every batch size must list the same, non-zero number of units")
        for bs, durations in self.by_batch.items():
            if bs < 1:
                raise InvalidProfile(f"batch size must be >= 1, got {bs}")
            if any(d < 0 for d in durations):
                raise InvalidProfile(f"negative unit duration at batch size {bs}")
        object.__setattr__(self, "_sizes", tuple(sorted(self.by_batch)))

    @classmethod
    def from_us(cls, data: Mapping[str, list[float]] | Mapping[int, list[float]]) -> Profile:
        """From the simulator/profiler shape: ``{"<batch size>": [microseconds, ...]}``."""
        return cls({int(k): tuple(float(x) * 1e-6 for x in v) for k, v in data.items()})

    def to_us(self) -> dict[str, list[float]]:
        return {str(bs): [round(d * 1e6, 3) for d in self.by_batch[bs]] for bs in self._sizes}

    def scaled(self, factor: float) -> Profile:
        """The same profile with every duration multiplied by ``factor``."""
        return Profile({bs: tuple(d * factor for d in v) for bs, v in self.by_batch.items()})

    @property
    def num_units(self) -> int:
        return len(self.by_batch[self._sizes[0]])

    def units(self, batch_size: int) -> tuple[float, ...]:
        """Predicted durations (seconds) of every unit at ``batch_size``."""
        cached = self._cache.get(batch_size)
        if cached is not None:
            return cached
        result = self._interpolate(batch_size)
        self._cache[batch_size] = result
        return result

    def _interpolate(self, bs: int) -> tuple[float, ...]:
        sizes = self._sizes
        if bs in self.by_batch:
            return tuple(self.by_batch[bs])
        if bs < sizes[0]:
            ref = self.by_batch[sizes[0]]
            return tuple(d * bs / sizes[0] for d in ref)
        i = bisect.bisect_left(sizes, bs)
        if i == len(sizes):
            if len(sizes) == 1:
                ref = self.by_batch[sizes[0]]
                return tuple(d * bs / sizes[0] for d in ref)
            lo, hi = sizes[-2], sizes[-1]
        else:
            lo, hi = sizes[i - 1], sizes[i]
        a, b = self.by_batch[lo], self.by_batch[hi]
        w = (bs - lo) / (hi - lo)
        return tuple(max(0.0, x + (y - x) * w) for x, y in zip(a, b, strict=True))


def profile_for(profiles: Mapping[str, Profile], job: Job) -> Profile | None:
    """``job``'s model's profile in ``profiles``, or None where it does not describe the
    job's units: a model loaded anew while the job waited (its new version split into
    another number of units) plans the job without one, as a model with no profile."""
    profile = profiles.get(job.model)
    return profile if profile is not None and profile.num_units == job.num_units else None
