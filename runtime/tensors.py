"""Tensor descriptions shared by the model repository, the codec and the metadata endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.errors import InvalidInput
from scheduler.priority import brief

# v2 datatype name -> numpy dtype. BYTES maps to object arrays of ``bytes``.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model. ``-1`` in ``shape`` is a variable dimension
    (the first one is the batch dimension where the model batches)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"unknown datatype {brief(self.datatype)} for tensor '{self.name}'")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < -1 or d == 0
               for d in self.shape):
            raise InvalidInput(f"bad shape {brief(list(self.shape))} for tensor '{self.name}'")

    @property
    def numpy_dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def to_metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
