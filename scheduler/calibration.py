"""How fast the device runs each model now, against its profile.

A profile is measured once, at load, in a quiet process. The speed the models then run at
moves: a shared CPU's speed drifts by tens of percent within minutes (other processes,
frequency, what shares its caches), and the serving process itself costs the device's host
side time the profile never saw (on CUDA, kernel launches slowed by the event loop and the
interpreter lock). A plan chosen on the profile's durations then misses: chunks that were to
fit a latency-critical stream's slack overrun it.

``SpeedCalibration`` keeps, per model, the speed each chunk ran at: the factor by which the
profile's unit durations would have to be scaled for the predictor to give the chunk's
measured time (``Predictor.speed_ratio``: the launches and sync point, fixed costs, are not
scaled). It reports the median of the recent ratios: the factor by which the profile's
durations are scaled before a policy plans with them. Chunks
predicted shorter than ``min_predicted_s`` are not counted (timer and bookkeeping noise
outweighs them); a factor needs ``min_samples`` ratios and stays within ``bounds``.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

DEFAULT_WINDOW = 64
DEFAULT_MIN_SAMPLES = 8
DEFAULT_MIN_PREDICTED_S = 50e-6
DEFAULT_BOUNDS = (0.25, 4.0)
# a new factor replaces the one in use only when it moved this much (relative): plans stay
# put while the ratios only jitter
DEFAULT_HYSTERESIS = 0.05


@dataclass
class _ModelSpeed:
    ratios: deque[float]
    factor: float = 1.0
    new: int = 0
    chunks: int = 0


@dataclass
class SpeedCalibration:
    window: int = DEFAULT_WINDOW
    min_samples: int = DEFAULT_MIN_SAMPLES
    min_predicted_s: float = DEFAULT_MIN_PREDICTED_S
    bounds: tuple[float, float] = DEFAULT_BOUNDS
    hysteresis: float = DEFAULT_HYSTERESIS
    _models: dict[str, _ModelSpeed] = field(default_factory=dict)

    def observe(self, model: str, predicted_s: float, ratio: float | None) -> bool:
        """Count one chunk of ``model``, predicted from the profile to take ``predicted_s``,
        that ran at ``ratio`` x the profile's durations (None: not measurable); True when
        the model's factor changed."""
        if predicted_s < self.min_predicted_s or ratio is None or not ratio > 0.0:
            return False
        m = self._models.get(model)
        if m is None:
            m = self._models[model] = _ModelSpeed(deque(maxlen=self.window))
        m.ratios.append(ratio)
        m.chunks += 1
        m.new += 1
        # recomputed every ``min_samples`` chunks once there are enough: a median over the
        # window (on the executor thread, between chunks)
        if len(m.ratios) < self.min_samples or m.new < self.min_samples:
            return False
        m.new = 0
        lo, hi = self.bounds
        factor = min(hi, max(lo, statistics.median(m.ratios)))
        if abs(factor / m.factor - 1.0) <= self.hysteresis:
            return False
        m.factor = factor
        return True

    def factor(self, model: str) -> float:
        """The speed ``model`` runs at against its profile (1.0 until enough chunks ran)."""
        m = self._models.get(model)
        return m.factor if m is not None else 1.0

    def chunks(self, model: str) -> int:
        """How many of ``model``'s chunks were counted."""
        m = self._models.get(model)
        return m.chunks if m is not None else 0

    def forget(self, model: str) -> None:
        self._models.pop(model, None)
