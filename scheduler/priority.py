"""Priority classes and the priority table: the contract shared by the runtime and the controller.

The scale points one way everywhere: ``LATENCY_CRITICAL`` outranks ``BATCH``. Numerically a
*smaller* rank is more urgent, as in tritonclient's request-level ``priority`` parameter
(1 = highest, 0 = "the model's default").
"""

from __future__ import annotations

import enum
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SchedulerError(Exception):
    """Root of every error the scheduler package raises."""


class InvalidSettings(SchedulerError):
    """A priority table entry or annotation value that cannot be applied."""


class Priority(enum.Enum):
    """A model's class. ``rank`` 1 is the most urgent; a higher rank yields to a lower one."""

    LATENCY_CRITICAL = "latency-critical"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        return 1 if self is Priority.LATENCY_CRITICAL else 2

    @classmethod
    def parse(cls, value: object) -> Priority:
        for member in cls:
            if value == member.value:
                return member
        allowed = ", ".join(m.value for m in cls)
        raise InvalidSettings(f"priority must be one of {allowed}, got {brief(value)}")

    def with_request_level(self, level: int) -> Priority:
        """The class a request runs at when it asks for tritonclient priority ``level``.

        0 keeps the model's class; 1 asks for the highest, which a request may never be
        granted above its model's class; 2 and above ask to run as batch work.
        """
        if level < 0:
            raise InvalidSettings(f"priority must be >= 0, got {level}")
        if level in (0, 1):
            return self
        return Priority.BATCH


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict = 2, 4, 4
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 60


def brief(value: object) -> str:
    """``repr(value)`` cut short: what a message quotes of a configured value. A YAML alias
    nests one small list in another many times over; written out whole, ten lines of YAML
    make a line of hundreds of megabytes."""
    return _BRIEF.repr(value)


@dataclass(frozen=True)
class ModelSettings:
    """Scheduling settings of one model, as the operator gave them.

    ``slo_ms`` is required for latency-critical models and an optional deadline for batch
    models. ``max_batch_size`` bounds dynamic batching (None: the model's own limit).
    """

    priority: Priority = Priority.BATCH
    slo_ms: float | None = None
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.slo_ms is not None and not 0 < self.slo_ms < math.inf:
            raise InvalidSettings(f"slo_ms must be a positive number, got {brief(self.slo_ms)}")
        if self.priority is Priority.LATENCY_CRITICAL and self.slo_ms is None:
            raise InvalidSettings("slo_ms is required for a latency-critical model")
        if self.max_batch_size is not None and (
            isinstance(self.max_batch_size, bool) or self.max_batch_size < 1
        ):
            raise InvalidSettings(
                f"max_batch_size must be a positive integer, got {brief(self.max_batch_size)}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"priority": self.priority.value}
        if self.slo_ms is not None:
            out["slo_ms"] = int(self.slo_ms) if float(self.slo_ms).is_integer() else self.slo_ms
        if self.max_batch_size is not None:
            out["max_batch_size"] = self.max_batch_size
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSettings:
        if not isinstance(data, Mapping):
            raise InvalidSettings(f"a model entry must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"priority", "slo_ms", "max_batch_size"}
        if unknown:
            raise InvalidSettings(f"unknown keys {sorted(unknown)}")
        slo = data.get("slo_ms")
        mbs = data.get("max_batch_size")
        if slo is not None and (isinstance(slo, bool) or not isinstance(slo, (int, float))
                                or not 0 < slo < 1e12):
            raise InvalidSettings(f"slo_ms must be a positive number, got {brief(slo)}")
        if mbs is not None and (isinstance(mbs, bool) or not isinstance(mbs, int)):
            raise InvalidSettings(f"max_batch_size must be a positive integer, got {brief(mbs)}")
        return cls(
            priority=Priority.parse(data.get("priority", Priority.BATCH.value)),
            slo_ms=float(slo) if slo is not None else None,
            max_batch_size=mbs,
        )


@dataclass(frozen=True)
class PriorityTable:
    """Model name -> settings: the parsed form of ``priorities.yaml``.

    File shape (written by the controller into ConfigMap ``deft-priorities``)::

        models:
          detector: {priority: latency-critical, slo_ms: 10, max_batch_size: 4}
          classifier: {priority: batch}
    """

    models: Mapping[str, ModelSettings]

    def get(self, name: str) -> ModelSettings | None:
        return self.models.get(name)

    def to_dict(self) -> dict[str, Any]:
        return {"models": {name: self.models[name].to_dict() for name in sorted(self.models)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PriorityTable:
        if data is None:
            return cls(models={})
        if not isinstance(data, Mapping):
            raise InvalidSettings("the priority table must be a mapping with a 'models' key")
        unknown = set(data) - {"models"}
        if unknown:  # a misspelt 'models' would empty the table without a word
            raise InvalidSettings(f"unknown keys {brief(sorted(map(str, unknown)))} (the "
                                  "table has one key, 'models')")
        models = data.get("models")
        if models is None:
            models = {}
        if not isinstance(models, Mapping):
            raise InvalidSettings("'models' must map model names to settings")
        parsed: dict[str, ModelSettings] = {}
        for name, entry in models.items():
            try:
                parsed[str(name)] = ModelSettings.from_dict(entry)
            except InvalidSettings as exc:
                raise InvalidSettings(f"model {brief(name)}: {exc}") from exc
        return cls(models=parsed)
