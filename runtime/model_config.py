"""A model's ``config.yaml``: its fields, their validation, and the v2 <-> torch dtypes.

See :mod:`runtime.model_repository` for the layout and ``config/model.example.yaml`` for
every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime import profiler
from runtime.errors import InvalidInput
from runtime.tensors import TensorSpec
from scheduler.priority import InvalidSettings, ModelSettings, brief

CONFIG_FILE = "config.yaml"

DEFAULT_MAX_QUEUE_SIZE = 128
DEFAULT_MAX_UNITS = 16
# a request waits at most this long for others to batch with (a minute: more is a mistake)
MAX_QUEUE_DELAY_MS = 60_000

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
            raise InvalidInput(f"{where}: unknown fields {brief(unknown)}; "
                               f"known: {list(_CONFIG_KEYS)}")
        try:
            settings = ModelSettings.from_dict(
                {k: data[k] for k in ("priority", "slo_ms", "max_batch_size") if k in data}
            )
        except InvalidSettings as exc:
            raise InvalidInput(f"{where}: {exc}") from exc
        delay = data.get("max_queue_delay_ms", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) \
                or not 0 <= delay <= MAX_QUEUE_DELAY_MS:
            raise InvalidInput(f"{where}: max_queue_delay_ms must be a number from 0 to "
                               f"{MAX_QUEUE_DELAY_MS}, got {brief(delay)}")
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
        raise InvalidInput(f"{where}: {key} must be a positive integer, got {brief(value)}")
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
        if not isinstance(datatype, str) or datatype not in V2_TO_TORCH:
            raise InvalidInput(
                f"{where}: {at}.datatype must be one of {sorted(V2_TO_TORCH)}, "
                f"got {brief(datatype)}"
            )
        if not isinstance(shape, list):
            raise InvalidInput(f"{where}: {at}.shape must be a list of integers")
        try:
            specs.append(TensorSpec(name, datatype, tuple(shape)))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {at}.shape: {exc}") from exc
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}: {key} names must be unique, got {brief(names)}")
    return tuple(specs)


def torch_dtype(spec: TensorSpec) -> torch.dtype:
    """The torch dtype of a tensor spec (BYTES has none)."""
    try:
        return V2_TO_TORCH[spec.datatype]
    except KeyError:
        raise InvalidInput(f"tensor '{spec.name}': {spec.datatype} has no torch dtype") from None
