"""Time for the API layer: a monotonic clock for timers and a wall clock for Event stamps.

Waiting is not here: the loops wait on a ``Signal`` (``threading.Event`` in production, a
fake that advances a fake clock in tests), so no test ever sleeps.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    def now(self) -> dt.datetime:
        """The wall-clock time, timezone-aware UTC."""
        ...


class Signal(Protocol):
    """The part of ``threading.Event`` the loops use."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """``2024-05-01T12:00:00Z``: the form Kubernetes uses for Event timestamps."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
