"""Measured unit durations of segmented models, and the on-disk cache that makes restarts instant.

A profile has the shape of the simulator workload's ``profile``: batch size (as a string) ->
the duration of each unit in microseconds, in execution order::

    {"1": [40.1, 35.0, 80.2], "8": [210.4, 190.0, 455.9]}

Each duration is the median of ``repeats`` timed runs after ``warmup`` untimed ones, under
``torch.inference_mode``; on CUDA the device is synchronised before and after every unit so
a unit's time is its own. Profiles, and the cut positions chosen by balancing, are cached as
JSON files keyed by a hash of the model file, the device name, the torch version and the
unit count (``$DEFT_CACHE_DIR/profiles``, default ``~/.cache/deft/profiles``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from runtime import segments
from runtime.segments import SegmentedModel

log = logging.getLogger(__name__)

DEFAULT_WARMUP = 2
DEFAULT_REPEATS = 5
CACHE_FORMAT = 2  # 2: CUDA units scaled to a whole-model run

Profile = dict[str, list[float]]
InputsFor = Callable[[int], Mapping[str, torch.Tensor]]


def batch_sizes_up_to(max_batch_size: int) -> tuple[int, ...]:
    """1 and the powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_us(model: SegmentedModel, state: Any, start: int, end: int) -> float:
    """Runs units ``[start, end)`` of ``state``; their wall time in microseconds (on CUDA
    the device is synchronised before and after, so the time is theirs alone)."""
    _synchronize(model.device)
    began = time.perf_counter_ns()
    model.run(state, start, end)
    _synchronize(model.device)
    return (time.perf_counter_ns() - began) / 1000.0


def _event_timed_units_us(model: SegmentedModel, state: Any) -> list[float]:
    """On CUDA: every unit of ``state`` launched back to back, as a chunk runs them, with an
    event recorded between units; each unit's device time in microseconds. A host sync
    around every unit would add its latency (tens of microseconds, as long as a small
    unit) to every unit, where the predictor counts launches and syncs itself."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(model.num_units + 1)]
    _synchronize(model.device)
    events[0].record()
    for unit in range(model.num_units):
        model.run(state, unit, unit + 1)
        events[unit + 1].record()
    _synchronize(model.device)
    return [events[i].elapsed_time(events[i + 1]) * 1000.0 for i in range(model.num_units)]


def _event_timed_whole_us(model: SegmentedModel, state: Any) -> float:
    """On CUDA: every unit of ``state`` in one call, as one chunk runs them; microseconds."""
    began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _synchronize(model.device)
    began.record()
    model.run(state, 0, model.num_units)
    ended.record()
    _synchronize(model.device)
    return began.elapsed_time(ended) * 1000.0


def _scaled_to_whole(units_us: list[float], whole_us: float) -> list[float]:
    """Units timed one call each, scaled so that they add up to the whole model run in one
    call, where that is faster. While kernel launches keep the GPU waiting (small models on
    a fast GPU), each call's own host work shows up in its unit's time: an H200 gave a sum
    1.3 x the whole run, and every prediction of a chunk of several units as much too long.
    The per-chunk cost of a call is the predictor's launch cost."""
    total = sum(units_us)
    if whole_us <= 0 or total <= whole_us:
        return units_us
    return [u * whole_us / total for u in units_us]


def time_units(
    model: SegmentedModel,
    inputs: Mapping[str, torch.Tensor],
    *,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    on_pass: Callable[[], None] | None = None,
) -> list[float]:
    """Median duration of each unit of ``model`` on ``inputs``, in microseconds.

    Runs ``warmup + repeats`` passes over every unit; ``on_pass`` is called after each.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    samples: list[list[float]] = [[] for _ in range(model.num_units)]
    cuda = model.device.type == "cuda"
    wholes: list[float] = []
    with torch.inference_mode():
        for attempt in range(warmup + repeats):
            state = model.start(inputs)
            if cuda:
                took_each = _event_timed_units_us(model, state)
            else:
                took_each = [_timed_us(model, state, u, u + 1) for u in range(model.num_units)]
            model.finish(state)
            if cuda and model.num_units > 1:
                state = model.start(inputs)
                whole = _event_timed_whole_us(model, state)
                model.finish(state)
                if attempt >= warmup:
                    wholes.append(whole)
            if attempt >= warmup:
                for unit, took in enumerate(took_each):
                    samples[unit].append(took)
            if on_pass is not None:
                on_pass()
    medians = [statistics.median(s) for s in samples]
    if wholes:
        medians = _scaled_to_whole(medians, statistics.median(wholes))
    return [round(m, 1) for m in medians]


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(
        self, label: str, total: int, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = max(total, 1)
        self.done = 0

    def step(self, note: str = "") -> None:
        self.done = min(self.done + 1, self.total)
        if not self.enabled:
            return
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        self._stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {note:<12}")
        self._stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._stream.write("\n")
            self._stream.flush()


def profile(
    model: SegmentedModel,
    inputs_for: InputsFor,
    batch_sizes: Sequence[int],
    *,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    progress: Progress | None = None,
) -> Profile:
    """Unit durations (µs) at each batch size; ``inputs_for(n)`` builds a batch of ``n``."""
    out: Profile = {}
    for size in batch_sizes:
        note = f"batch {size}"
        tick = (lambda: progress.step(note)) if progress is not None else None  # noqa: B023
        out[str(size)] = time_units(
            model, inputs_for(size), warmup=warmup, repeats=repeats, on_pass=tick
        )
    return out


# ---------------------------------------------------------------------------------------------
# cache keys


def device_name(device: torch.device | str) -> str:
    """A name for the hardware behind ``device`` that identifies its timings."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{_cpu_model()}:{torch.get_num_threads()}threads"
    return device.type


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$DEFT_CACHE_DIR/profiles``, or ``~/.cache/deft/profiles``."""
    root = os.environ.get("DEFT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "deft"
    return base / "profiles"


class ProfileCache:
    """JSON entries under one directory, keyed by a hash of their identifying fields.

    Never fails a load: an unreadable entry is a miss, an unwritable directory is logged once
    and the cache then only reads. Writes are atomic, so processes may share a directory.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._writable = True

    def _path(self, kind: str, fields: Mapping[str, Any]) -> Path:
        blob = json.dumps({"kind": kind, **fields}, sort_keys=True, separators=(",", ":"))
        return self.directory / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"

    def get(self, kind: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        path = self._path(kind, fields)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("fields") != json.loads(
            json.dumps(dict(fields))
        ):
            return None
        data = entry.get("data")
        return data if isinstance(data, dict) else None

    def put(self, kind: str, fields: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        if not self._writable:
            return
        path = self._path(kind, fields)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(
                json.dumps({"fields": dict(fields), "data": dict(data)}), encoding="utf-8"
            )
            os.replace(tmp, path)
        except OSError as exc:
            self._writable = False
            log.warning("profile cache %s is not writable (%s); not caching", self.directory, exc)


# ---------------------------------------------------------------------------------------------
# split + profile, with the cache


@dataclass(frozen=True)
class Prepared:
    """A model split into units and profiled."""

    model: SegmentedModel
    profile: Profile
    from_cache: bool  # no timing was needed: cuts and every batch size came from the cache
    seconds: float  # wall time spent splitting and profiling


def prepare(
    name: str,
    program: torch.export.ExportedProgram | torch.jit.ScriptModule,
    inputs_for: InputsFor,
    *,
    batch_sizes: Sequence[int],
    max_units: int,
    model_file: str | Path,
    device: torch.device | str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    cache: ProfileCache | None,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    progress: bool | None = None,
    measure: bool = True,
    balance_batch_size: int | None = None,
    verify: bool = True,
) -> Prepared:
    """Split ``program`` (already on ``device``) into balanced units and profile them.

    Exported programs are cut at every allowed position, timed at the largest batch size,
    and merged into at most ``max_units`` units; TorchScript runs as one unit. With
    ``measure=False`` nothing is timed: units are balanced by node count and the profile is
    empty. ``cache`` (None: no cache) keeps both the cuts and the profile. Pieces are timed
    at ``balance_batch_size`` (default: the largest of ``batch_sizes``); keep it fixed
    (the model's max batch size) so the cuts do not depend on which sizes are profiled.
    With ``verify``, each row of a profile read from the cache is checked against a timed
    run of the whole model at its batch size, and the rows the run is much faster than are
    measured again (see ``STALE_RATIO``). A row measured slower than a larger batch size's
    (the cores were busy while it was timed) is measured again, up to ``RETRIES`` times,
    keeping the fastest.
    """
    began = time.perf_counter()
    base: dict[str, Any] = {}
    if cache is not None:
        base = {
            "format": CACHE_FORMAT,
            "model": file_digest(model_file),
            "device": device_name(device),
            "torch": torch.__version__,
        }
    sizes = sorted(set(batch_sizes))
    timed = False
    bar = Progress(f"profiling {name}", 0, enabled=progress)

    if isinstance(program, torch.jit.ScriptModule):
        model = segments.from_script(name, program, input_names, output_names)
    elif not measure:
        model = segments.split(
            name, program, max_units=max_units, input_names=input_names, output_names=output_names
        )
    else:
        model, timed = _split_balanced(
            name, program, inputs_for, balance_batch_size or max(sizes), max_units, base, cache,
            warmup, repeats, bar, input_names, output_names,
        )  # fmt: skip

    result: Profile = {}
    if measure:
        fields = {**base, "units": model.num_units, "cuts": list(model.cuts)}
        cached = (cache.get("profile", fields) if cache is not None else None) or {}
        missing = [s for s in sizes if not _valid_row(cached.get(str(s)), model.num_units)]
        if cache is not None and verify:
            stale = [s for s in sizes if s not in missing
                     and _stale(model, inputs_for, s, cached[str(s)])]
            if stale:
                log.info("the cached profile of %s is slower than the model runs now at batch "
                         "sizes %s (measured on a busier machine); profiling them again",
                         name, stale)
                missing = sorted(set(missing) | set(stale))
        if missing:
            bar.total = len(missing) * (warmup + repeats)
            measured = profile(
                model, inputs_for, missing, warmup=warmup, repeats=repeats, progress=bar
            )
            cached = {**cached, **measured}
            for _ in range(RETRIES):
                suspect = [s for s in _out_of_order(cached, sizes) if s in missing]
                if not suspect:
                    break
                log.info("%s: batch sizes %s measured slower than a larger one (the cores "
                         "were busy); measuring them again", name, suspect)
                again = profile(model, inputs_for, suspect, warmup=warmup, repeats=repeats)
                cached.update({k: row for k, row in again.items() if sum(row) < sum(cached[k])})
            timed = True
            if cache is not None:
                cache.put("profile", fields, cached)
        result = {str(s): list(cached[str(s)]) for s in sizes}
    bar.close()
    return Prepared(model, result, measure and not timed, time.perf_counter() - began)


RETRIES = 2  # how many times a row out of order with a larger batch size is measured again
OUT_OF_ORDER = 1.5  # a row this much slower than a larger batch size's is out of order


def _out_of_order(rows: Mapping[str, Sequence[float]], sizes: Sequence[int]) -> list[int]:
    """The batch sizes whose row is ``OUT_OF_ORDER`` times slower than a larger size's: a
    larger batch does not run faster than a smaller one, so the slower was timed while
    something else held the cores."""
    totals = {s: sum(rows[str(s)]) for s in sizes}
    return [s for s in sizes
            if any(totals[s] > OUT_OF_ORDER * totals[b] for b in sizes if b > s)]


# A cached profile whose sum is more than 1 / STALE_RATIO times a whole run measured now was
# taken while something else held the cores: it would make every prediction too slow. A run
# slower than the profile is not a reason to measure again (the machine is busy now, and a
# profile measured now would be the wrong one).
STALE_RATIO = 0.6
STALE_MIN_US = 2000.0  # below this a whole run is too short to judge by one timing


def _stale(model: SegmentedModel, inputs_for: InputsFor, batch_size: int,
           row: Sequence[float]) -> bool:
    expected_us = sum(row)
    if expected_us < STALE_MIN_US:
        return False
    inputs = inputs_for(batch_size)
    took = []
    with torch.inference_mode():
        for _ in range(3):  # the first run warms up; the faster of the other two counts
            state = model.start(inputs)
            took.append(_timed_us(model, state, 0, model.num_units))
            model.finish(state)
    return min(took[1:]) < STALE_RATIO * expected_us


def _valid_row(row: Any, units: int) -> bool:
    return (
        isinstance(row, list)
        and len(row) == units
        and all(isinstance(v, (int, float)) and v >= 0 for v in row)
    )


def _split_balanced(
    name: str,
    program: torch.export.ExportedProgram,
    inputs_for: InputsFor,
    batch_size: int,
    max_units: int,
    base: Mapping[str, Any],
    cache: ProfileCache | None,
    warmup: int,
    repeats: int,
    bar: Progress,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> tuple[SegmentedModel, bool]:
    fields = {**base, "max_units": max_units, "balance_batch": batch_size}
    cached = cache.get("cuts", fields) if cache is not None else None
    if cached is not None:
        try:
            model = segments.from_graph(
                name, program, cached.get("cuts", []),
                input_names=input_names, output_names=output_names,
            )  # fmt: skip
            return model, False
        except (ValueError, TypeError) as exc:
            log.info("cached cuts for %s do not fit (%s); splitting again", name, exc)

    def piece_costs(fine: SegmentedModel) -> list[float]:
        bar.total = warmup + repeats
        bar.label = f"splitting {name}"
        costs = time_units(
            fine,
            inputs_for(batch_size),
            warmup=warmup,
            repeats=repeats,
            on_pass=lambda: bar.step(f"{fine.num_units} pieces"),
        )
        bar.close()
        bar.done = 0
        bar.label = f"profiling {name}"
        return costs

    model = segments.split(
        name, program, max_units=max_units, piece_costs=piece_costs,
        input_names=input_names, output_names=output_names,
    )  # fmt: skip
    if cache is not None:
        cache.put("cuts", fields, {"cuts": list(model.cuts)})
    return model, True
