"""Deft's models as kserve models, so kserve's data plane (its gRPC server, its model registry
and health checks) serves them through the same engine as the REST routes.

Imports kserve at module level: import this module only from the entry point (kserve parses
``sys.argv`` when imported).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from grpc_interceptor.exceptions import DeadlineExceeded, ResourceExhausted, Unavailable
from kserve import Model
from kserve.errors import InferenceError
from kserve.errors import InvalidInput as KServeInvalidInput
from kserve.errors import ModelNotFound as KServeModelNotFound
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from runtime import errors
from runtime.codec import UNSUPPORTED_PARAMS
from runtime.engine import Engine
from runtime.tensors import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec


def _kserve_error(exc: errors.DeftError) -> Exception:
    """The exception kserve's servers turn into the right status: kserve's own errors where it
    has one (REST and gRPC), gRPC status exceptions for the rest (kserve's gRPC server passes
    them through; its REST server answers them with 500, as it did any engine error)."""
    if isinstance(exc, errors.InvalidInput):
        return KServeInvalidInput(str(exc))
    if isinstance(exc, errors.InferenceFailed):
        return InferenceError(str(exc))
    if isinstance(exc, errors.ModelNotFound):
        return KServeModelNotFound(exc.name)
    if isinstance(exc, (errors.ModelNotReady, errors.ShuttingDown)):
        return Unavailable(str(exc))
    if isinstance(exc, errors.QueueFull):
        return ResourceExhausted(str(exc))
    if isinstance(exc, errors.RequestTimeout):
        return DeadlineExceeded(str(exc))
    return exc


def _unknown_uint64(message: Any) -> int | None:
    """``uint64_param`` (field 5) of an InferParameter parsed with kserve's v2 proto, which
    lacks the field: tritonclient sends ``priority`` and ``timeout`` in it over gRPC, and
    protobuf keeps it among the message's unknown fields."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    for field in UnknownFieldSet(message):
        if field.field_number == 5 and field.wire_type == 0:  # varint
            return int(field.data)
    return None


def _param(parameters: Any, key: str) -> int:
    if not parameters or key not in parameters:
        return 0
    value = parameters[key]
    for attr in ("int64_param", "uint64_param"):
        if hasattr(value, attr) and value.WhichOneof("parameter_choice") == attr:
            return int(getattr(value, attr))
    if hasattr(value, "WhichOneof") and value.WhichOneof("parameter_choice") is None:
        unsigned = _unknown_uint64(value)
        if unsigned is not None:
            return unsigned
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KServeInvalidInput(f"parameter '{key}' must be a non-negative integer")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unsupported(label: str, parameters: Any) -> None:
    for key in UNSUPPORTED_PARAMS:
        if parameters and key in parameters:
            raise KServeInvalidInput(f"{label}: parameter '{key}' is not supported")


def _check_version(payload: InferRequest, version: str, name: str) -> None:
    """A version named in the request must be the served one (each model serves one)."""
    wanted = getattr(payload, "model_version", None)
    if wanted and wanted != version:
        raise KServeModelNotFound(f"{name} (version {wanted}; this server has version {version})")


def _checked_inputs(payload: InferRequest, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's tensors as numpy arrays, checked as the REST decoder checks them: each
    input once, known, of the model's datatype, with a shape of non-negative sizes that the
    model accepts and that its data fills exactly; every model input present."""
    by_name = {s.name: s for s in specs}
    inputs: dict[str, np.ndarray] = {}
    for tensor in payload.inputs:
        label = f"input '{tensor.name}'"
        if tensor.name in inputs:
            raise KServeInvalidInput(f"{label}: given more than once")
        spec = by_name.get(tensor.name)
        if spec is None:
            raise KServeInvalidInput(f"{label}: the model has no such input")
        if tensor.datatype != spec.datatype:
            raise KServeInvalidInput(
                f"{label}: datatype {tensor.datatype} but the model expects {spec.datatype}")
        shape = list(tensor.shape)
        if not all(_is_count(d) for d in shape):
            raise KServeInvalidInput(
                f"{label}: shape must be a list of non-negative integers, got {shape}")
        if not spec.accepts_shape(tuple(shape)):
            raise KServeInvalidInput(
                f"{label}: shape {shape} does not match the model's {list(spec.shape)}")
        _unsupported(label, tensor.parameters)
        try:
            arr = np.asarray(tensor.as_numpy(), dtype=V2_TO_NUMPY[spec.datatype])
        except Exception:  # noqa: BLE001 - numpy's words for it name no tensor
            arr = None
        if arr is None or list(arr.shape) != shape:
            raise KServeInvalidInput(
                f"{label}: its data is not {math.prod(shape)} {spec.datatype} values for "
                f"shape {shape}")
        inputs[tensor.name] = arr
    missing = [name for name in by_name if name not in inputs]
    if missing:
        raise KServeInvalidInput(f"input '{missing[0]}': missing from the request")
    return inputs


def _requested_outputs(payload: InferRequest, specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The outputs the request names (each once, known, no unsupported parameter), in its
    order; every output where it names none."""
    requested = getattr(payload, "request_outputs", None) or []
    if not requested:
        return list(specs)
    by_name = {s.name: s for s in specs}
    out: list[TensorSpec] = []
    for item in requested:
        label = f"output '{item.name}'"
        if any(s.name == item.name for s in out):
            raise KServeInvalidInput(f"{label}: requested more than once")
        if item.name not in by_name:
            raise KServeInvalidInput(f"{label}: the model has no such output")
        _unsupported(label, item.parameters)
        out.append(by_name[item.name])
    return out


class DeftModel(Model):  # type: ignore[misc]
    """One served model as kserve sees it; ``predict`` goes through Deft's scheduler."""

    def __init__(self, name: str, engine: Engine) -> None:
        super().__init__(name)
        self.engine = False  # no separate engine loop for kserve to start or stop
        self._deft = engine
        self.ready = engine.model_ready(name)

    def load(self) -> bool:
        self.ready = self._deft.model_ready(self.name)
        return self.ready

    async def healthy(self) -> bool:
        return self._deft.model_ready(self.name) and self._deft.ready()

    def get_input_types(self) -> list[dict[str, Any]]:
        try:
            return [s.to_metadata() for s in self._deft.model(self.name).inputs]
        except errors.DeftError as exc:
            raise _kserve_error(exc) from None

    def get_output_types(self) -> list[dict[str, Any]]:
        try:
            return [s.to_metadata() for s in self._deft.model(self.name).outputs]
        except errors.DeftError as exc:
            raise _kserve_error(exc) from None

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        try:
            served = self._deft.model(self.name)
        except errors.DeftError as exc:
            raise _kserve_error(exc) from None
        _check_version(payload, served.version, self.name)
        inputs = _checked_inputs(payload, served.inputs)
        wanted = _requested_outputs(payload, served.outputs)
        try:
            outputs = await self._deft.infer(
                self.name, inputs,
                priority=_param(payload.parameters, "priority"),
                timeout_us=_param(payload.parameters, "timeout") or None,
            )
        except errors.DeftError as exc:
            raise _kserve_error(exc) from None
        infer_outputs = []
        for spec in wanted:
            arr = outputs[spec.name]
            out = InferOutput(spec.name, list(arr.shape), NUMPY_TO_V2.get(arr.dtype, spec.datatype))
            out.set_data_from_numpy(arr, binary_data=True)
            infer_outputs.append(out)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=infer_outputs,
            use_binary_outputs=payload.use_binary_outputs if hasattr(
                payload, "use_binary_outputs") else False,
        )
