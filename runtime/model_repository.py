"""The model repository: finding model folders, parsing their configuration, loading them safely.

Layouts (``--model_dir DIR``):

- multi-model: ``DIR/<name>/model.pt2`` (or ``model.pt``) and ``DIR/<name>/config.yaml``, one
  folder per model; the folder name is the model's name (its key in the priority table).
- single model (KServe's storage initializer, ``--model_name NAME``): the files lie directly
  in ``DIR``; ``config.yaml`` is optional there, inputs and outputs then come from the
  exported program's signature.

``config.yaml`` (every key optional for ``model.pt2``; see ``config/model.example.yaml``)::

    priority: latency-critical      # or batch (default)
    slo_ms: 25                      # required for latency-critical
    max_batch_size: 4               # dynamic batching bound (default 1)
    max_queue_delay_ms: 2           # how long dynamic batching waits (default 0)
    max_queue_size: 128             # queue bound (default 128)
    max_units: 16                   # most units the model is split into (default 16)
    profile_batch_sizes: [1, 2, 4]  # default: 1 and powers of two up to max_batch_size
    inputs:  [{name: image, datatype: FP32, shape: [-1, 3, 96, 96]}]
    outputs: [{name: logits, datatype: FP32, shape: [-1, 10]}]

Loading never unpickles arbitrary objects. Only two formats load: ``torch.export`` programs
(``.pt2``) through ``torch.export.load`` and TorchScript (``.pt``) through ``torch.jit.load``.
Before ``torch.export.load`` runs, every archive entry it would unpickle is checked with
``torch.load(weights_only=True)`` (torch's restricted unpickler) and entries holding opaque
Python objects or compiled native code are refused. Full pickles (``.pth``, ``.pkl``, ...)
are refused without being opened.

:func:`discover` and :func:`load` are separate so a caller can load every model and report
the ones that fail while the others serve (:func:`load_all` does exactly that).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from runtime import profiler
from runtime.archives import check_exported_archive, check_torchscript_archive
from runtime.errors import InvalidInput, ModelLoadError, ModelNotFound
from runtime.model_config import CONFIG_FILE, TORCH_TO_V2, ModelConfig
from runtime.priorities import SAFE_LOADER
from runtime.segments import SegmentedModel, signature
from runtime.tensors import TensorSpec
from scheduler.priority import ModelSettings

__all__ = [
    "CONFIG_FILE", "ModelConfig", "ModelSource", "LoadedModel", "check_exported_archive",
    "check_torchscript_archive", "discover", "find", "load", "load_all", "load_program",
    "stamp",
    "read_config", "resolve_config",
]

log = logging.getLogger(__name__)

EXPORTED_SUFFIX = ".pt2"
TORCHSCRIPT_SUFFIX = ".pt"
PREFERRED_FILES = ("model.pt2", "model.pt")
# Formats that are (or usually wrap) full pickles: loading them could run arbitrary code.
REFUSED_SUFFIXES = (".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".sav", ".dill")


# ---------------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class ModelSource:
    """A model found on disk, not yet loaded.

    ``problem`` says why it cannot load (no model file, a refused pickle, several candidate
    files); :func:`load` raises it as a ModelLoadError so the caller reports it per model.
    """

    name: str
    directory: Path
    model_file: Path | None
    config_file: Path | None
    problem: str | None = None

    @property
    def format(self) -> str | None:
        """``"pt2"`` (torch.export), ``"torchscript"``, or None."""
        if self.model_file is None:
            return None
        return "pt2" if self.model_file.suffix == EXPORTED_SUFFIX else "torchscript"


_SINGLE_NOTED: set[str] = set()


def discover(model_dir: str | Path, model_name: str | None = None) -> list[ModelSource]:
    """The models under ``model_dir``, sorted by name.

    With ``model_name``: the single-model layout (files directly in ``model_dir``), or the
    folder ``model_dir/model_name``. Without: one model per sub-folder; a ``model_dir`` that
    holds a model file itself is a single model named after the folder. Hidden folders
    (``.``/``_`` prefixes, such as Kubernetes' ``..data``) and folders with neither a config
    nor a model-like file are skipped. Never raises for one bad model; raises
    ModelLoadError only when ``model_dir`` is not a readable directory.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelLoadError(f"model directory {str(root)!r} does not exist or is not a directory")
    if model_name is not None:
        nested = root / model_name
        if not _has_model_files(root) and nested.is_dir():
            return [_source(model_name, nested)]
        return [_source(model_name, root)]
    if _has_model_files(root):
        if str(root) not in _SINGLE_NOTED:  # once: discovery runs on every repository call
            _SINGLE_NOTED.add(str(root))
            log.info("%s holds a model file itself: it is one model, %r, and its sub-folders "
                     "are not models", root, root.name)
        return [_source(root.name, root)]
    sources = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "_")) or not entry.is_dir():
            continue
        if (entry / CONFIG_FILE).is_file() or _has_model_files(entry, include_refused=True):
            sources.append(_source(entry.name, entry))
        else:
            log.debug("skipping %s: no model file and no %s", entry, CONFIG_FILE)
    return sources


def stamp(source: ModelSource) -> tuple[object, ...]:
    """What identifies ``source``'s files as they are now: the model file and the config
    (path, inode, size, modification time; links followed, so a ConfigMap's or a storage
    initializer's swapped link counts) and why it cannot load, if it cannot. A model whose
    stamp moved since it was loaded has new files: loading it again reloads it."""

    def of(path: Path | None) -> tuple[object, ...] | None:
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return (str(path),)
        return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)

    return (of(source.model_file), of(source.config_file), source.problem)


def find(model_dir: str | Path, name: str) -> ModelSource:
    """The model called ``name`` under ``model_dir`` (multi-model layout)."""
    for source in discover(model_dir):
        if source.name == name:
            return source
    raise ModelNotFound(name)


def _files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def _has_model_files(folder: Path, include_refused: bool = False) -> bool:
    suffixes = (EXPORTED_SUFFIX, TORCHSCRIPT_SUFFIX) + (REFUSED_SUFFIXES if include_refused else ())
    return any(p.suffix in suffixes for p in _files(folder))


def _source(name: str, folder: Path) -> ModelSource:
    files = _files(folder)
    config = folder / CONFIG_FILE
    config_file = config if config.is_file() else None

    def found(model_file: Path | None, problem: str | None = None) -> ModelSource:
        return ModelSource(name, folder, model_file, config_file, problem)

    if config_file is None and (config.exists() or config.is_symlink()):
        # a config that cannot be read must not leave the model on defaults (a
        # latency-critical model serving as batch work)
        return found(None, f"{CONFIG_FILE} is not a readable file (a dangling link, a "
                           "folder, a device?)")

    for preferred in PREFERRED_FILES:
        if (folder / preferred).is_file():
            return found(folder / preferred)
    for suffix in (EXPORTED_SUFFIX, TORCHSCRIPT_SUFFIX):
        candidates = [p for p in files if p.suffix == suffix]
        if len(candidates) == 1:
            return found(candidates[0])
        if len(candidates) > 1:
            listed = ", ".join(p.name for p in candidates)
            return found(None, f"several model files ({listed}); name one model.pt2 or model.pt")
    refused = [p for p in files if p.suffix in REFUSED_SUFFIXES]
    if refused:
        return found(
            None,
            f"refusing {refused[0].name}: pickled models can run arbitrary code when loaded; "
            "save the model with torch.export (model.pt2) or TorchScript (model.pt)",
        )
    return found(None, f"no model file (model.pt2 or model.pt) in {str(folder)!r}")


def read_config(source: ModelSource) -> ModelConfig:
    """The source's ``config.yaml`` parsed and validated (defaults where there is none)."""
    if source.config_file is None:
        return ModelConfig(name=source.name)
    try:
        data = yaml.load(source.config_file.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"model '{source.name}': cannot read {CONFIG_FILE}: {exc}") from exc
    try:
        return ModelConfig.from_dict(source.name, data)
    except InvalidInput as exc:
        raise ModelLoadError(f"model '{source.name}': {CONFIG_FILE}: {exc}") from exc
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # odd YAML values
        raise ModelLoadError(f"model '{source.name}': {CONFIG_FILE}: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from exc


# ---------------------------------------------------------------------------------------------
# safe loading


# torch.export.load keeps the archive being read in a module global: two loads at once (the
# repository API, ModelMesh's parallel loads) fail with "_CURRENT_DESERIALIZER is already set"
_DESERIALIZING = threading.Lock()


def load_program(
    source: ModelSource, device: torch.device | str = "cpu"
) -> torch.export.ExportedProgram | torch.jit.ScriptModule:
    """The source's model file, checked and loaded on ``device``; ModelLoadError otherwise."""
    if source.problem is not None or source.model_file is None:
        raise ModelLoadError(f"model '{source.name}': {source.problem or 'no model file'}")
    path = source.model_file
    device = torch.device(device)
    try:
        if source.format == "pt2":
            check_exported_archive(path)
            with _DESERIALIZING:
                program = torch.export.load(str(path))
            if device != torch.device("cpu"):
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            return program
        check_torchscript_archive(path)
        with _DESERIALIZING:
            module = torch.jit.load(str(path), map_location=device)
        module.eval()
        return module
    except ModelLoadError as exc:
        raise ModelLoadError(f"model '{source.name}': {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"model '{source.name}': cannot load {path.name}: {type(exc).__name__}: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# signature: config vs program


def _spec_from_value(name: str, value: Any) -> TensorSpec | None:
    if not isinstance(value, torch.Tensor) or value.dtype not in TORCH_TO_V2:
        return None
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, TORCH_TO_V2[value.dtype], shape)


def _batch_bound(program: torch.export.ExportedProgram, value: Any) -> int | None:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return None
    dim = value.shape[0]
    if isinstance(dim, int):
        return None
    try:
        bound = int(program.range_constraints[dim.node.expr].upper)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return None  # no range, or an unbounded one
    return bound if 1 <= bound < 2**31 else None


def _resolve_names(
    kind: str,
    configured: tuple[TensorSpec, ...],
    program_side: list[tuple[str, Any]],
    model: str,
    batching: bool,
) -> tuple[tuple[TensorSpec, ...], list[str]]:
    """Configured specs, in the program's order, and the name each program slot gets."""
    if len(configured) != len(program_side):
        listed = [n for n, _ in program_side]
        raise ModelLoadError(
            f"model '{model}': {CONFIG_FILE} lists {len(configured)} {kind}, the model has "
            f"{len(program_side)} ({listed})"
        )
    own = [n for n, _ in program_side]
    by_name = {s.name: s for s in configured}
    ordered = tuple(by_name[n] for n in own) if set(by_name) == set(own) else configured
    if ordered is configured and [s.name for s in configured] != own:
        renamed = ", ".join(f"{o} -> {c.name}" for o, c in zip(own, configured, strict=True))
        log.info("model '%s': %s named in %s's order: %s", model, kind, CONFIG_FILE, renamed)
    for spec, (_, value) in zip(ordered, program_side, strict=True):
        if not isinstance(value, torch.Tensor):
            continue
        where = f"model '{model}': {kind[:-1]} '{spec.name}'"
        if TORCH_TO_V2.get(value.dtype) != spec.datatype:
            raise ModelLoadError(
                f"{where}: {CONFIG_FILE} says {spec.datatype}, the model has {value.dtype}"
            )
        if len(spec.shape) != value.dim():
            raise ModelLoadError(
                f"{where}: {CONFIG_FILE} shape {list(spec.shape)} has rank {len(spec.shape)}, "
                f"the model's has rank {value.dim()}"
            )
        for i, (want, have) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if not isinstance(have, int):
                continue
            if want not in (-1, have):
                raise ModelLoadError(
                    f"{where}: dimension {i} is {have} in the model, {want} in {CONFIG_FILE}"
                )
            if i == 0 and batching:
                raise ModelLoadError(
                    f"{where}: the model has a fixed batch dimension ({have}) but max_batch_size "
                    "is more than 1; export it with a dynamic first dimension"
                )
    return ordered, [s.name for s in ordered]


def resolve_config(
    config: ModelConfig, program: torch.export.ExportedProgram | torch.jit.ScriptModule
) -> tuple[ModelConfig, list[str], list[str]]:
    """The config completed from the program's signature, and the names of the program's
    inputs and outputs in the program's own order."""
    name = config.name
    if isinstance(program, torch.jit.ScriptModule):
        missing = [k for k in ("inputs", "outputs") if not getattr(config, k)]
        if missing:
            raise ModelLoadError(
                f"model '{name}': a TorchScript model needs {' and '.join(missing)} in "
                f"{CONFIG_FILE} (its signature has no shapes)"
            )
        return config, [s.name for s in config.inputs], [s.name for s in config.outputs]
    inputs, outputs = signature(program)
    updates: dict[str, Any] = {}
    if config.inputs:
        ordered_in, in_names = _resolve_names(
            "inputs", config.inputs, inputs, name, config.max_batch_size > 1
        )
    else:
        specs = [_spec_from_value(n, v) for n, v in inputs]
        if any(s is None for s in specs):
            raise ModelLoadError(
                f"model '{name}': cannot infer its inputs from the program; list them in "
                f"{CONFIG_FILE}"
            )
        ordered_in, in_names = tuple(s for s in specs if s), [n for n, _ in inputs]
        updates["inputs"] = ordered_in
    if config.outputs:
        _, out_names = _resolve_names(
            "outputs", config.outputs, outputs, name, config.max_batch_size > 1
        )
    else:
        specs = [_spec_from_value(n, v) for n, v in outputs]
        if any(s is None for s in specs):
            raise ModelLoadError(
                f"model '{name}': cannot infer its outputs from the program; list them in "
                f"{CONFIG_FILE}"
            )
        updates["outputs"] = tuple(s for s in specs if s)
        out_names = [n for n, _ in outputs]
    if config.settings.max_batch_size is None and config.profile_batch_sizes is None and inputs:
        bounds = {_batch_bound(program, v) for _, v in inputs}
        if len(bounds) == 1 and None not in bounds:
            bound = bounds.pop()
            updates["settings"] = ModelSettings(
                priority=config.settings.priority,
                slo_ms=config.settings.slo_ms,
                max_batch_size=bound,
            )
    if updates:
        config = replace(config, **updates)
        try:
            config.check_batching()
        except InvalidInput as exc:
            raise ModelLoadError(str(exc)) from exc
    return config, in_names, out_names


# ---------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the executor: its config, its units, and their measured durations.

    ``profile`` has the simulator's shape (batch size -> unit durations in µs); it is empty
    when the model was loaded with ``profile=False``.
    """

    name: str
    config: ModelConfig
    model: SegmentedModel
    profile: dict[str, list[float]]
    source: ModelSource
    device: torch.device
    load_seconds: float  # reading and checking the file
    prepare_seconds: float  # splitting and profiling (near zero from the cache)
    profile_from_cache: bool
    stamp: tuple[object, ...] | None = None  # the files as they were when loading began


def load(
    source: ModelSource,
    device: torch.device | str = "cpu",
    *,
    profile: bool = True,
    max_units: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    warmup: int = profiler.DEFAULT_WARMUP,
    repeats: int = profiler.DEFAULT_REPEATS,
    progress: bool | None = None,
    verify_profile: bool = True,
) -> LoadedModel:
    """Load one model onto ``device``, split it into units and profile them.

    ``max_units`` and ``batch_sizes`` override the config; ``cache_dir`` overrides
    ``profiler.default_cache_dir()``. With ``profile=False`` nothing is timed (units are
    balanced by node count). ``verify_profile``: check a cached profile against one run and
    measure again where it is stale (``profiler.prepare``). Raises ModelLoadError with the
    reason; nothing is left behind.
    """
    began = time.perf_counter()
    files = stamp(source)  # before reading: a change while loading shows at the next load
    device = torch.device(device)
    config = read_config(source)
    program = load_program(source, device)
    config, in_names, out_names = resolve_config(config, program)
    loaded_at = time.perf_counter()
    sizes = tuple(batch_sizes) if batch_sizes is not None else config.batch_sizes
    if not sizes or min(sizes) < 1 or max(sizes) > config.max_batch_size:
        raise ModelLoadError(
            f"model '{source.name}': batch sizes {list(sizes)} must lie in "
            f"[1, {config.max_batch_size}]"
        )
    cache = profiler.ProfileCache(cache_dir) if use_cache else None
    assert source.model_file is not None  # load_program checked it

    def inputs_for(batch_size: int) -> dict[str, torch.Tensor]:
        return config.example_inputs(batch_size, device)

    try:
        prepared = profiler.prepare(
            source.name,
            program,
            inputs_for,
            batch_sizes=sizes,
            max_units=max_units or config.max_units,
            model_file=source.model_file,
            device=device,
            input_names=in_names,
            output_names=out_names,
            cache=cache,
            warmup=warmup,
            repeats=repeats,
            progress=progress,
            measure=profile,
            balance_batch_size=config.max_batch_size,
            verify=verify_profile,
        )
        if not profile:
            prepared.model(inputs_for(1))  # a model that cannot run fails here, not later
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"model '{source.name}': failed to run on example inputs: {type(exc).__name__}: {exc}"
        ) from exc
    return LoadedModel(
        name=source.name,
        config=config,
        model=prepared.model,
        profile=prepared.profile,
        source=source,
        device=device,
        load_seconds=loaded_at - began,
        prepare_seconds=prepared.seconds,
        profile_from_cache=prepared.from_cache,
        stamp=files,
    )


def load_all(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    model_name: str | None = None,
    **options: Any,
) -> tuple[list[LoadedModel], dict[str, ModelLoadError]]:
    """Load every model under ``model_dir``: the loaded ones, and the failures by name.

    ``options`` are passed to :func:`load`. A failure is logged and does not stop the rest.
    """
    loaded: list[LoadedModel] = []
    failed: dict[str, ModelLoadError] = {}
    for source in discover(model_dir, model_name):
        try:
            loaded.append(load(source, device, **options))
        except ModelLoadError as exc:
            log.warning("model %s failed to load: %s", source.name, exc)
            failed[source.name] = exc
    return loaded, failed
