"""Value types of the v2 wire codec: decode limits and the decoded request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from runtime.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
"""Binary tensor extension: length of the JSON header that starts the body (lower case)."""

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Limits:
    """Bounds applied while decoding one request; exceeding one raises ``PayloadTooLarge``.

    ``max_body_bytes`` bounds the body as received and again after decompression;
    ``max_tensor_elements`` bounds the element count of every input tensor."""

    max_body_bytes: int = 128 * 1024 * 1024
    max_tensor_elements: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_body_bytes < 0 or self.max_tensor_elements < 0:
            raise ValueError("limits must be non-negative")


class RequestedOutput(NamedTuple):
    """One output the client asked for, and whether it wants the data in binary form."""

    name: str
    binary_data: bool


@dataclass(frozen=True, eq=False)
class InferRequest:
    """A decoded v2 inference request.

    ``inputs`` keeps the request's order; every array has the shape the request declared and
    the numpy dtype of its datatype (``BYTES``: object array of ``bytes``). Arrays decoded from
    the binary section may be read-only views into the body: copy before writing in place.
    ``outputs`` is empty when the client named no outputs (then every output is returned,
    binary when ``binary_data_output`` is true); each entry's ``binary_data`` already falls
    back to ``binary_data_output`` where the output did not say. ``parameters`` are the
    request-level parameters as sent, with ``priority`` and ``timeout`` already checked to be
    non-negative integers."""

    id: str | None
    parameters: dict[str, object]
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    binary_data_output: bool

    @property
    def priority(self) -> int:
        """Request-level priority: 0 = the model's default, 1 = highest, larger = lower."""
        value = self.parameters.get("priority", 0)
        return value if isinstance(value, int) else 0

    @property
    def timeout_us(self) -> int | None:
        """Queueing timeout in microseconds, or None where the request gave none."""
        value = self.parameters.get("timeout")
        return value if isinstance(value, int) else None

    def output_plan(self, available: Sequence[str]) -> tuple[RequestedOutput, ...]:
        """The outputs to return, in order, given the model's output names.

        Raises ``InvalidInput`` for a requested output the model does not have."""
        if not self.outputs:
            return tuple(RequestedOutput(name, self.binary_data_output) for name in available)
        known = set(available)
        for out in self.outputs:
            if out.name not in known:
                raise InvalidInput(f"output '{out.name}': the model has no such output")
        return self.outputs
