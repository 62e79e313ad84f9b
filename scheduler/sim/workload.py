"""Workload files for the simulator (format: docs/simulator.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scheduler.priority import Priority, SchedulerError
from scheduler.profile import DeviceCosts, InvalidProfile, Profile

ARRIVAL_TYPES = ("periodic", "poisson", "closed", "trace")


class WorkloadError(SchedulerError):
    """A workload file that cannot be run; the message names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Arrival:
    type: str
    rate_per_s: float = 0.0
    clients: int = 0
    offsets_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Stream:
    model: str
    priority: Priority
    batch_size: int
    arrival: Arrival
    slo_ms: float | None = None
    timeout_ms: float | None = None

    @property
    def label(self) -> str:
        return f"{self.model}/{self.priority.value}"


@dataclass(frozen=True)
class Workload:
    name: str
    duration_s: float
    seed: int
    costs: DeviceCosts
    device: Mapping[str, float]
    models: Mapping[str, Profile]
    streams: tuple[Stream, ...]
    # the runtime's CPU lane: latency-critical jobs on a thread of their own (engine.py)
    cpu_lane: bool = False
    # the runtime's --batch_slice_ms: batch chunks while another batch model is active
    batch_slice_s: float = 0.02

    def only(self, index: int) -> Workload:
        """The same workload with one stream alone on the device."""
        return replace(self, streams=(self.streams[index],))

    def with_slo(self, index: int, slo_ms: float) -> Workload:
        streams = list(self.streams)
        streams[index] = replace(streams[index], slo_ms=slo_ms)
        return replace(self, streams=tuple(streams))


def _num(
    data: Mapping[str, Any],
    key: str,
    where: str,
    *,
    positive: bool = False,
    required: bool = True,
    default: float | None = None,
) -> float | None:
    if key not in data:
        if required:
            raise WorkloadError(f"{where}{key}", "is required")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorkloadError(f"{where}{key}", f"must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise WorkloadError(
            f"{where}{key}", f"must be {'> 0' if positive else '>= 0'}, got {value}"
        )
    return float(value)


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WorkloadError(where, f"must be an object, got {type(value).__name__}")
    return value


def parse_arrival(data: Any, where: str) -> Arrival:
    data = _obj(data, where)
    kind = data.get("type")
    if kind not in ARRIVAL_TYPES:
        raise WorkloadError(
            f"{where}.type", f"must be one of {', '.join(ARRIVAL_TYPES)}, got {kind!r}"
        )
    w = f"{where}."
    if kind in ("periodic", "poisson"):
        return Arrival(kind, rate_per_s=_num(data, "rate_per_s", w, positive=True) or 0.0)
    if kind == "closed":
        clients = data.get("clients")
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise WorkloadError(f"{w}clients", f"must be a positive integer, got {clients!r}")
        return Arrival(kind, clients=clients)
    offsets = data.get("offsets_ms")
    if not isinstance(offsets, list) or not offsets:
        raise WorkloadError(f"{w}offsets_ms", "must be a non-empty list of numbers")
    for i, x in enumerate(offsets):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise WorkloadError(f"{w}offsets_ms[{i}]", f"must be a number >= 0, got {x!r}")
    return Arrival(kind, offsets_ms=tuple(sorted(float(x) for x in offsets)))


def parse_stream_basics(
    s: Mapping[str, Any], where: str, models: Collection[str]
) -> tuple[str, Priority, int]:
    """A stream's ``model`` (one of ``models``), ``priority`` and ``batch_size``."""
    model = s.get("model")
    if model not in models:
        raise WorkloadError(f"{where}.model", f"names an unknown model {model!r}")
    try:
        priority = Priority.parse(s.get("priority", "batch"))
    except SchedulerError as exc:
        raise WorkloadError(f"{where}.priority", str(exc)) from None
    bs = s.get("batch_size", 1)
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise WorkloadError(f"{where}.batch_size", f"must be a positive integer, got {bs!r}")
    return str(model), priority, bs


def parse_workload(data: Any) -> Workload:
    data = _obj(data, "workload")
    name = data.get("name", "workload")
    if not isinstance(name, str):
        raise WorkloadError("name", "must be a string")
    duration = _num(data, "duration_s", "", positive=True)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WorkloadError("seed", f"must be an integer, got {seed!r}")
    device = _obj(data.get("device", {}), "device")
    launch = _num(device, "launch_overhead_us", "device.", required=False, default=0.0) or 0.0
    sync = _num(device, "sync_overhead_us", "device.", required=False, default=0.0) or 0.0
    cpu_lane = device.get("cpu_lane", False)
    if not isinstance(cpu_lane, bool):
        raise WorkloadError("device.cpu_lane", f"must be true or false, got {cpu_lane!r}")
    slice_ms = _num(device, "batch_slice_ms", "device.", required=False, positive=True,
                    default=20.0)
    models_raw = _obj(data.get("models"), "models") if "models" in data else None
    if not models_raw:
        raise WorkloadError("models", "is required and must name at least one model")
    models: dict[str, Profile] = {}
    for mname, mdata in models_raw.items():
        where = f"models.{mname}"
        prof = _obj(mdata, where).get("profile")
        prof = _obj(prof, f"{where}.profile")
        for bs, units in prof.items():
            if not str(bs).isdigit() or int(bs) < 1:
                raise WorkloadError(
                    f"{where}.profile", f"batch size keys must be positive integers, got {bs!r}"
                )
            if not isinstance(units, list) or not all(
                not isinstance(u, bool)
                and isinstance(u, (int, float))
                and math.isfinite(u)
                and u >= 0
                for u in units
            ):
                raise WorkloadError(
                    f"{where}.profile.{bs}", "must be a list of durations (us, >= 0)"
                )
        try:
            models[str(mname)] = Profile.from_us(prof)
        except InvalidProfile as exc:
            raise WorkloadError(f"{where}.profile", str(exc)) from None
    streams_raw = data.get("streams")
    if not isinstance(streams_raw, list) or not streams_raw:
        raise WorkloadError("streams", "is required and must be a non-empty list")
    streams: list[Stream] = []
    for i, s in enumerate(streams_raw):
        where = f"streams[{i}]"
        s = _obj(s, where)
        model, priority, batch_size = parse_stream_basics(s, where, models)
        slo = _num(s, "slo_ms", f"{where}.", positive=True, required=False)
        if priority is Priority.LATENCY_CRITICAL and slo is None:
            raise WorkloadError(f"{where}.slo_ms", "is required for a latency-critical stream")
        timeout = _num(s, "timeout_ms", f"{where}.", positive=True, required=False)
        streams.append(
            Stream(
                model,
                priority,
                batch_size,
                parse_arrival(s.get("arrival"), f"{where}.arrival"),
                slo,
                timeout,
            )
        )
    return Workload(
        name,
        duration or 0.0,
        seed,
        DeviceCosts.from_us(launch, sync),
        {"launch_overhead_us": launch, "sync_overhead_us": sync},
        models,
        tuple(streams),
        cpu_lane,
        (slice_ms or 20.0) / 1000.0,
    )


def load_workload(path: str | Path) -> Workload:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise WorkloadError("workload", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkloadError("workload", f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return parse_workload(data)
