"""The ``deft.dev/*`` annotations: parsing, inheritance from a host, and conversion to settings.

Contract (shared with the runtime through ``scheduler.priority``):

- ``deft.dev/priority``: ``latency-critical`` or ``batch`` (default ``batch``)
- ``deft.dev/slo-ms``: positive integer; required for latency-critical, an optional deadline
  for batch
- ``deft.dev/max-batch-size``: positive integer

Values are strings, as Kubernetes stores them. Surrounding whitespace is ignored; anything
else that is not exactly a positive decimal integer (``0``, ``-5``, ``1.5``, ``10ms``) is
invalid. Other keys under ``deft.dev/`` are reported as unknown (a likely typo) but do not
invalidate the object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.priority import InvalidSettings, ModelSettings, Priority

PREFIX = "deft.dev/"
PRIORITY = "deft.dev/priority"
SLO_MS = "deft.dev/slo-ms"
MAX_BATCH_SIZE = "deft.dev/max-batch-size"
KNOWN = (PRIORITY, SLO_MS, MAX_BATCH_SIZE)

_POSITIVE_INT = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Source:
    """Where an annotation value came from: the object itself or its host InferenceService."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True)
class Value:
    """One ``deft.dev/*`` annotation: its raw value and ``inherited_from`` (None: own value)."""

    key: str
    raw: object
    inherited_from: Source | None = None

    def describe(self) -> str:
        where = f" (inherited from {self.inherited_from})" if self.inherited_from else ""
        shown = f'"{self.raw}"' if isinstance(self.raw, str) else repr(self.raw)
        return f"{self.key}={shown}{where}"


def deft_values(annotations: Mapping[str, object]) -> dict[str, Value]:
    """The known ``deft.dev/*`` annotations of an object, by key (own values)."""
    return {key: Value(key, annotations[key]) for key in KNOWN if key in annotations}


def unknown_keys(annotations: Mapping[str, object]) -> list[str]:
    """``deft.dev/*`` keys this controller does not know, sorted; the prefix in any case
    (annotation keys are case-sensitive: ``Deft.dev/priority`` is not ``deft.dev/priority``,
    and is reported rather than silently ignored)."""
    return sorted(
        k for k in annotations
        if isinstance(k, str) and k.lower().startswith(PREFIX) and k not in KNOWN
    )


def inherit(
    own: Mapping[str, Value], host: Mapping[str, Value], source: Source
) -> dict[str, Value]:
    """Key by key, the object's own value, else the host's (marked as inherited from ``source``)."""
    merged = {key: Value(key, v.raw, source) for key, v in host.items()}
    merged.update(own)
    return merged


def value_problems(values: Mapping[str, Value]) -> list[str]:
    """Problems with each value on its own (unknown class, not a positive integer)."""
    problems = []
    for key in KNOWN:
        if key in values:
            try:
                _PARSERS[key](values[key])
            except InvalidSettings as exc:
                problems.append(str(exc))
    return problems


def to_settings(values: Mapping[str, Value]) -> ModelSettings:
    """The settings the values describe. Raises ``InvalidSettings`` with every problem found.

    Checks each value, then the rule that a latency-critical model needs an SLO.
    """
    problems = value_problems(values)
    if problems:
        raise InvalidSettings("; ".join(problems))
    priority = _parse_priority(values[PRIORITY]) if PRIORITY in values else Priority.BATCH
    slo = _parse_positive(values[SLO_MS]) if SLO_MS in values else None
    batch = _parse_positive(values[MAX_BATCH_SIZE]) if MAX_BATCH_SIZE in values else None
    if priority is Priority.LATENCY_CRITICAL and slo is None:
        raise InvalidSettings(f"{values[PRIORITY].describe()} requires {SLO_MS}")
    return ModelSettings(
        priority=priority,
        slo_ms=float(slo) if slo is not None else None,
        max_batch_size=batch,
    )


def describe_settings(settings: ModelSettings) -> str:
    """A one-line human description, e.g. ``latency-critical, slo 20 ms, max batch size 4``."""
    parts = [settings.priority.value]
    if settings.slo_ms is not None:
        slo = settings.to_dict()["slo_ms"]
        parts.append(f"slo {slo} ms" if settings.priority is Priority.LATENCY_CRITICAL
                     else f"deadline {slo} ms")
    if settings.max_batch_size is not None:
        parts.append(f"max batch size {settings.max_batch_size}")
    return ", ".join(parts)


def _text(value: Value) -> str:
    if not isinstance(value.raw, str):
        raise InvalidSettings(f"{value.describe()} must be a string (quote the value in YAML)")
    return value.raw.strip()


def _parse_priority(value: Value) -> Priority:
    text = _text(value)
    for member in Priority:
        if text == member.value:
            return member
    allowed = " or ".join(p.value for p in Priority)
    raise InvalidSettings(f"{value.describe()} is not {allowed}")


# more digits than any SLO in ms or batch size needs; longer text would overflow float()
# (an SLO over 10^308) or pass Python's digit limit for int(): the object gets a Warning
# instead of every sync failing
_MAX_DIGITS = 9


def _parse_positive(value: Value) -> int:
    text = _text(value)
    digits = text.lstrip("0")
    if not _POSITIVE_INT.fullmatch(text) or not digits:
        raise InvalidSettings(f"{value.describe()} is not a positive integer")
    if len(digits) > _MAX_DIGITS:
        raise InvalidSettings(f"{value.describe()} is too large (at most {_MAX_DIGITS} digits)")
    return int(digits)


_PARSERS = {PRIORITY: _parse_priority, SLO_MS: _parse_positive, MAX_BATCH_SIZE: _parse_positive}
