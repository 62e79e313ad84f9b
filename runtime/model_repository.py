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

import io
import json
import logging
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from runtime import profiler
from runtime.errors import InvalidInput, ModelLoadError, ModelNotFound
from runtime.segments import SegmentedModel, signature
from runtime.tensors import TensorSpec
from scheduler.priority import InvalidSettings, ModelSettings

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
EXPORTED_SUFFIX = ".pt2"
TORCHSCRIPT_SUFFIX = ".pt"
PREFERRED_FILES = ("model.pt2", "model.pt")
# Formats that are (or usually wrap) full pickles: loading them could run arbitrary code.
REFUSED_SUFFIXES = (".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".sav", ".dill")

DEFAULT_MAX_QUEUE_SIZE = 128
DEFAULT_MAX_UNITS = 16

V2_TO_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
TORCH_TO_V2: dict[torch.dtype, str] = {v: k for k, v in V2_TO_TORCH.items()}

_CONFIG_KEYS = (
    "priority",
    "slo_ms",
    "max_batch_size",
    "max_queue_delay_ms",
    "max_queue_size",
    "max_units",
    "profile_batch_sizes",
    "inputs",
    "outputs",
)


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ModelConfig:
    """A model's validated configuration.

    ``inputs``/``outputs`` may be empty when parsed from a config that leaves them to the
    model; :func:`load` fills them from the exported program's signature.
    """

    name: str
    settings: ModelSettings = field(default_factory=ModelSettings)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_units: int = DEFAULT_MAX_UNITS
    profile_batch_sizes: tuple[int, ...] | None = None

    @property
    def max_batch_size(self) -> int:
        """The dynamic batching bound (1 where the configuration gives none)."""
        return self.settings.max_batch_size or 1

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes the model is profiled at."""
        if self.profile_batch_sizes is not None:
            return self.profile_batch_sizes
        return profiler.batch_sizes_up_to(self.max_batch_size)

    def example_inputs(
        self, batch_size: int, device: torch.device | str = "cpu", seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Deterministic inputs of ``batch_size`` rows (the first ``-1`` of each shape; any
        other ``-1`` is 1): normal floats, zero integers, false booleans."""
        generator = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for spec in self.inputs:
            shape = [
                batch_size if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape)
            ]
            dtype = torch_dtype(spec)
            if dtype.is_floating_point:
                tensor = torch.randn(shape, generator=generator).to(dtype)
            else:
                tensor = torch.zeros(shape, dtype=dtype)
            out[spec.name] = tensor.to(device)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``config.yaml`` form; ``from_dict(name, to_dict())`` gives an equal config."""
        out: dict[str, Any] = self.settings.to_dict()
        out["max_queue_delay_ms"] = _plain_number(self.max_queue_delay_ms)
        out["max_queue_size"] = self.max_queue_size
        out["max_units"] = self.max_units
        if self.profile_batch_sizes is not None:
            out["profile_batch_sizes"] = list(self.profile_batch_sizes)
        if self.inputs:
            out["inputs"] = [spec.to_metadata() for spec in self.inputs]
        if self.outputs:
            out["outputs"] = [spec.to_metadata() for spec in self.outputs]
        return out

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any] | None) -> ModelConfig:
        """Validate a parsed ``config.yaml``; raises InvalidInput naming the bad field."""
        where = f"config of model '{name}'"
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in set(data) - set(_CONFIG_KEYS))
        if unknown:
            raise InvalidInput(f"{where}: unknown fields {unknown}; known: {list(_CONFIG_KEYS)}")
        try:
            settings = ModelSettings.from_dict(
                {k: data[k] for k in ("priority", "slo_ms", "max_batch_size") if k in data}
            )
        except InvalidSettings as exc:
            raise InvalidInput(f"{where}: {exc}") from exc
        delay = data.get("max_queue_delay_ms", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            raise InvalidInput(f"{where}: max_queue_delay_ms must be a number >= 0, got {delay!r}")
        queue = _positive_int(
            data.get("max_queue_size", DEFAULT_MAX_QUEUE_SIZE), "max_queue_size", where
        )
        units = _positive_int(data.get("max_units", DEFAULT_MAX_UNITS), "max_units", where)
        sizes = data.get("profile_batch_sizes")
        if sizes is not None:
            if not isinstance(sizes, list) or not sizes:
                raise InvalidInput(f"{where}: profile_batch_sizes must be a non-empty list")
            sizes = tuple(sorted({_positive_int(s, "profile_batch_sizes", where) for s in sizes}))
            limit = settings.max_batch_size or 1
            if sizes[-1] > limit:
                raise InvalidInput(
                    f"{where}: profile_batch_sizes {list(sizes)} exceed max_batch_size {limit}"
                )
        config = cls(
            name=name,
            settings=settings,
            inputs=_tensor_specs(data.get("inputs"), "inputs", where),
            outputs=_tensor_specs(data.get("outputs"), "outputs", where),
            max_queue_delay_ms=float(delay),
            max_queue_size=queue,
            max_units=units,
            profile_batch_sizes=sizes,
        )
        config.check_batching()
        return config

    def check_batching(self) -> None:
        """Batching needs a variable first dimension on every input and output."""
        if self.max_batch_size <= 1:
            return
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            for spec in specs:
                if not spec.shape or spec.shape[0] != -1:
                    raise InvalidInput(
                        f"config of model '{self.name}': max_batch_size is "
                        f"{self.max_batch_size} but {kind} '{spec.name}' has shape "
                        f"{list(spec.shape)}; the first dimension must be -1"
                    )


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _positive_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _tensor_specs(value: Any, key: str, where: str) -> tuple[TensorSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidInput(f"{where}: {key} must be a list of tensors")
    specs: list[TensorSpec] = []
    for i, item in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{where}: {at} must be a mapping with name, datatype, shape")
        extra = sorted(set(item) - {"name", "datatype", "shape"})
        missing = [k for k in ("name", "datatype", "shape") if k not in item]
        if extra or missing:
            raise InvalidInput(f"{where}: {at}: missing fields {missing}, unknown {extra}")
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}: {at}.name must be a non-empty string")
        if datatype not in V2_TO_TORCH:
            raise InvalidInput(
                f"{where}: {at}.datatype must be one of {sorted(V2_TO_TORCH)}, got {datatype!r}"
            )
        if not isinstance(shape, list):
            raise InvalidInput(f"{where}: {at}.shape must be a list of integers")
        try:
            specs.append(TensorSpec(name, datatype, tuple(shape)))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {at}.shape: {exc}") from exc
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}: {key} names must be unique, got {names}")
    return tuple(specs)


def torch_dtype(spec: TensorSpec) -> torch.dtype:
    """The torch dtype of a tensor spec (BYTES has none)."""
    try:
        return V2_TO_TORCH[spec.datatype]
    except KeyError:
        raise InvalidInput(f"tensor '{spec.name}': {spec.datatype} has no torch dtype") from None


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
        data = yaml.safe_load(source.config_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"model '{source.name}': cannot read {CONFIG_FILE}: {exc}") from exc
    try:
        return ModelConfig.from_dict(source.name, data)
    except InvalidInput as exc:
        raise ModelLoadError(f"model '{source.name}': {CONFIG_FILE}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# safe loading


def _archive_root(names: Sequence[str], marker: str) -> str | None:
    for name in names:
        if name == marker:
            return ""
        if name.endswith("/" + marker) and name.count("/") == marker.count("/") + 1:
            return name[: -len(marker)]
    return None


def _check_weights_only(archive: zipfile.ZipFile, member: str, where: str) -> None:
    try:
        data = archive.read(member)
    except KeyError:
        raise ModelLoadError(f"{where}: archive entry {member!r} is missing") from None
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: refusing archive entry {member!r}: it holds objects beyond tensors "
            f"({type(exc).__name__}); re-export the model with torch.export"
        ) from exc


def check_exported_archive(path: str | Path) -> None:
    """Refuse a ``.pt2`` whose loading could run code other than torch's own.

    ``torch.export.load`` unpickles sample inputs, legacy weight files and weights or
    constants marked ``use_pickle`` with full pickle: each of those entries must load with
    ``torch.load(weights_only=True)``. Opaque and custom objects, compiled code
    (AOTInductor, ExecuTorch, MTIA) and the legacy archive format are refused.
    """
    from torch.export.pt2_archive import constants as pt2

    where = Path(path).name
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{where} is not a torch.export archive (not a zip file)")
    objects = (pt2.CUSTOM_OBJ_FILENAME_PREFIX, pt2.OPAQUE_OBJ_FILENAME_PREFIX)
    payload_configs = {
        pt2.WEIGHTS_DIR: pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.partition("{}")[2],
        pt2.CONSTANTS_DIR: pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.partition("{}")[2],
    }
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = _archive_root(names, pt2.ARCHIVE_FORMAT_PATH)
        if (
            root is None
            or archive.read(root + pt2.ARCHIVE_FORMAT_PATH).decode(errors="replace").strip()
            != pt2.ARCHIVE_FORMAT_VALUE
        ):
            raise ModelLoadError(
                f"{where} is not a torch.export archive of the current format "
                "(save it with torch.export.save)"
            )
        pickled: set[str] = set()
        for name in (n[len(root) :] for n in names if n.startswith(root)):
            if name.startswith((pt2.AOTINDUCTOR_DIR, pt2.EXECUTORCH_DIR, pt2.MTIA_DIR + "/")):
                raise ModelLoadError(f"{where}: refusing compiled code {name!r}")
            if name.rpartition("/")[2].startswith(objects):
                raise ModelLoadError(f"{where}: refusing opaque Python object {name!r}")
            directory = next((d for d in payload_configs if name.startswith(d)), None)
            if name.startswith(pt2.SAMPLE_INPUTS_DIR) or (directory and name.endswith(".pt")):
                pickled.add(name)
            if directory and name.endswith(payload_configs[directory]):
                try:
                    entries = dict(json.loads(archive.read(root + name)).get("config", {}))
                except (ValueError, TypeError, AttributeError) as exc:
                    raise ModelLoadError(f"{where}: unreadable {name!r}: {exc}") from exc
                for fqn, meta in entries.items():
                    path_name = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
                    if path_name.startswith(objects):
                        raise ModelLoadError(f"{where}: refusing opaque Python object {fqn!r}")
                    if not isinstance(meta, dict) or meta.get("use_pickle", True):
                        pickled.add(directory + path_name)
        for name in sorted(pickled):
            _check_weights_only(archive, root + name, where)


def check_torchscript_archive(path: str | Path) -> None:
    """Refuse a ``.pt`` that is not a TorchScript archive (e.g. a ``torch.save`` pickle)."""
    where = Path(path).name
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{where} is not a TorchScript archive (not a zip file)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    has_code = any("/code/" in n or n.startswith("code/") for n in names)
    has_constants = any(n.endswith("constants.pkl") for n in names)
    if not (has_code and has_constants):
        raise ModelLoadError(
            f"refusing {where}: not a TorchScript archive (a torch.save pickle?); save the model "
            "with torch.jit.save or torch.export"
        )


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
            program = torch.export.load(str(path))
            if device != torch.device("cpu"):
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            return program
        check_torchscript_archive(path)
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
