"""What the scheduler knows about latency-critical streams: SLOs, activity, solo latency.

The ``deft`` policy sizes batch chunks so that every active latency-critical stream still
meets its SLO: ``solo latency + preemption delay <= SLO``. The solo latency is estimated
online as the p99 of what recent requests would have taken alone on the device: each
stream's requests are replayed through a virtual queue of their own (their arrival times and
measured execution times, no batch work), which also removes the knock-on delay a preempted
request passes to the next one. Before enough samples exist, the predicted inference delay of
one job stands in.

A request also spends time outside the device: waiting for the server to read it, reading
and decoding it, handing it to the executor and back. Where the server reports that time
(``on_host_time``), its p99 counts against the SLO too: ``solo latency + host time +
preemption delay <= SLO``. On a GPU, where a small model's compute is a fraction of a
millisecond, that time can be most of a request's latency, and grows with the load the
batch requests put on the server.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field


class RecentSamples:
    """The last ``maxlen`` samples of a duration and their p99, recomputed once 16 new ones
    have come (the deft policy asks for it at every sync point). Any thread may append;
    readers copy before sorting or iterating."""

    def __init__(self, maxlen: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self._p99: float | None = None
        self._new = 0
        self.appended = 0  # every sample ever appended (the last ``maxlen`` are kept)

    def append(self, value: float) -> None:
        self._values.append(value)
        self._new += 1
        self.appended += 1

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        return iter(self.values())

    def values(self) -> list[float]:
        return list(self._values.copy())

    def p99(self) -> float:
        if self._p99 is None or self._new >= 16:
            ordered = sorted(self.values())
            self._p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
            self._new = 0
        return self._p99


@dataclass
class StreamState:
    model: str
    slo_s: float
    predicted_solo_s: float
    last_arrival: float = -math.inf
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    samples: RecentSamples = field(default_factory=RecentSamples)
    virtual_free_at: float = -math.inf
    host_samples: RecentSamples = field(default_factory=RecentSamples)

    def solo_p99(self, min_samples: int) -> float:
        if len(self.samples) < min_samples:
            return max([self.predicted_solo_s, *self.samples.values()])
        return self.samples.p99()

    def host_p99(self, min_samples: int) -> float:
        """p99 of the time recent requests spent in the server outside the device (0 until
        ``min_samples`` are reported: a server that reports none is budgeted as before)."""
        if len(self.host_samples) < min_samples:
            return 0.0
        return self.host_samples.p99()

    def slack(self, min_samples: int) -> float:
        """How long a request may wait for batch work and still meet the SLO."""
        return self.slo_s - self.solo_p99(min_samples) - self.host_p99(min_samples)

    def rate(self, now: float, window_s: float) -> float:
        recent = [t for t in self.arrivals.copy() if t > now - window_s]
        return len(recent) / window_s if recent else 0.0


class LatencyCriticalStreams:
    """Tracks latency-critical models seen recently. Fed by the scheduler; read by ``deft``.

    One instance may be shared by two schedulers on two threads (the runtime's CPU lanes):
    writers only append and replace, readers copy before iterating.
    """

    def __init__(self, active_window_s: float = 1.0, min_samples: int = 20) -> None:
        self.active_window_s = active_window_s
        self.min_samples = min_samples
        self._streams: dict[str, StreamState] = {}
        self.version = 0  # bumps when a stream turns active again or an SLO changes

    def on_arrival(self, model: str, slo_s: float, predicted_solo_s: float, now: float) -> None:
        st = self._streams.get(model)
        if st is None or st.slo_s != slo_s:
            st = StreamState(model, slo_s, predicted_solo_s)
            if model in self._streams:
                st.samples = self._streams[model].samples
                st.host_samples = self._streams[model].host_samples
            self._streams[model] = st
            self.version += 1
        elif now - st.last_arrival > self.active_window_s:
            self.version += 1
        st.last_arrival = now
        st.arrivals.append(now)

    def on_completion(self, model: str, arrival: float, service_s: float) -> None:
        """A request of ``model`` that arrived at ``arrival`` ran for ``service_s``."""
        st = self._streams.get(model)
        if st is not None:
            start = max(arrival, st.virtual_free_at)
            st.virtual_free_at = start + service_s
            st.samples.append(st.virtual_free_at - arrival)

    def on_host_time(self, model: str, seconds: float) -> None:
        """A request of ``model`` spent ``seconds`` in the server outside the device (any
        thread may report)."""
        st = self._streams.get(model)
        if st is not None:
            st.host_samples.append(max(0.0, seconds))

    def state_key(self, now: float) -> tuple[object, ...]:
        """Equal for two moments whose ``budget`` may be taken as the same: the same
        streams active, the same SLOs, no new solo or server-time sample since. A cached
        budget is good while this key stays the same."""
        return (self.version, tuple((s.model, s.samples.appended, s.host_samples.appended)
                                    for s in self.active(now)))

    def active(self, now: float) -> list[StreamState]:
        return [s for s in self._streams.values() if now - s.last_arrival <= self.active_window_s]

    def budget(self, now: float) -> float:
        """The longest a batch chunk may hold the device: min over active streams of
        (SLO - solo p99 - host time p99). ``inf`` when no latency-critical stream is
        active."""
        best = math.inf
        for s in self.active(now):
            best = min(best, s.slack(self.min_samples))
        return best
