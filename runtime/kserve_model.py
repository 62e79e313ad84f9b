"""Deft's models as kserve models, so kserve's data plane (its gRPC server, its model registry
and health checks) serves them through the same engine as the REST routes.

Imports kserve at module level: import this module only from the entry point (kserve parses
``sys.argv`` when imported).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
from grpc_interceptor.exceptions import (
    DeadlineExceeded,
    Internal,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from kserve import Model
from kserve.errors import InvalidInput as KServeInvalidInput
from kserve.errors import ModelNotFound as KServeModelNotFound
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from runtime import errors
from runtime.codec import (
    MAX_REQUEST_PARAMETER,
    check_input,
    check_inputs_given,
    check_output,
    is_count,
    reject_unsupported,
)
from runtime.engine import Engine
from runtime.tensors import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec


def _model_not_found(exc: errors.ModelNotFound) -> KServeModelNotFound:
    """kserve's not-found error (NOT_FOUND over gRPC) with Deft's words, the REST error's."""
    err = KServeModelNotFound(exc.name)
    err.reason = str(exc)
    return err


class QueueFullStatus(ResourceExhausted):  # type: ignore[misc]
    """A full queue over gRPC (RESOURCE_EXHAUSTED), with REST's ``Retry-After`` in seconds."""

    def __init__(self, details: str, retry_after_s: float) -> None:
        super().__init__(details)
        self.retry_after_s = retry_after_s


def _kserve_error(exc: errors.DeftError) -> Exception:
    """The exception kserve's servers turn into the status REST gives (gRPC's code for it)
    with REST's words: kserve's own errors where it has one (REST and gRPC), gRPC status
    exceptions for the rest (kserve's gRPC server passes them through; its REST server
    answers them with 500, as it did any engine error)."""
    if isinstance(exc, errors.InvalidInput):
        return KServeInvalidInput(str(exc))
    if isinstance(exc, errors.ModelNotFound):
        return _model_not_found(exc)
    if isinstance(exc, (errors.ModelNotReady, errors.ShuttingDown)):
        return Unavailable(str(exc))
    if isinstance(exc, errors.QueueFull):
        return QueueFullStatus(str(exc), exc.retry_after_s)
    if isinstance(exc, errors.RequestTimeout):
        return DeadlineExceeded(str(exc))
    if isinstance(exc, errors.Unauthorized):
        return Unauthenticated(str(exc))
    if isinstance(exc, errors.Disabled):
        return PermissionDenied(str(exc))
    if isinstance(exc, (errors.InferenceFailed, errors.ModelLoadError)):
        return Internal(str(exc))
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
    """A request-level ``priority`` or ``timeout`` (0 where absent), checked as the REST
    decoder checks it: a non-negative integer (``int64_param``, or the ``uint64_param``
    tritonclient sends) of at most 2**63-1; a bool, string or double is refused, as REST
    refuses ``true``, ``"5"`` or ``5.0``."""
    if not parameters or key not in parameters:
        return 0
    value = parameters[key]
    number: int | None = None
    if hasattr(value, "WhichOneof"):
        choice = value.WhichOneof("parameter_choice")
        if choice in ("int64_param", "uint64_param"):
            number = int(getattr(value, choice))
        elif choice is None:
            number = _unknown_uint64(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or not 0 <= number <= MAX_REQUEST_PARAMETER:
        raise KServeInvalidInput(
            f"request parameter '{key}' must be a non-negative integer of at most 2**63-1")
    return number


@contextmanager
def as_kserve_errors() -> Iterator[None]:
    """Deft's errors raised inside, as the exceptions kserve's servers answer rightly."""
    try:
        yield
    except errors.DeftError as exc:
        raise _kserve_error(exc) from None


def _check_version(payload: InferRequest, version: str, name: str) -> None:
    """A version named in the request must be the served one (each model serves one); REST's
    words where it is not."""
    wanted = getattr(payload, "model_version", None)
    if wanted and wanted != version:
        raise _model_not_found(errors.ModelNotFound(name, wanted))


def _declared_shape(tensor: Any, by_name: dict[str, TensorSpec]) -> list[int]:
    """A request tensor's shape, of non-negative sizes, for an input the model has, of its
    datatype, in a shape it accepts (``InvalidInput`` where not)."""
    shape = list(tensor.shape)
    if not all(is_count(d) for d in shape):
        raise KServeInvalidInput(
            f"input '{tensor.name}': shape must be a list of non-negative integers, got {shape}")
    check_input(tensor.name, tensor.datatype, shape, by_name)
    return shape


def _not_filled(name: str, shape: list[int], datatype: str) -> KServeInvalidInput:
    return KServeInvalidInput(
        f"input '{name}': its data is not {math.prod(shape)} {datatype} values for shape {shape}")


def _checked_inputs(payload: InferRequest, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's tensors as numpy arrays, checked as the REST decoder checks them: each
    input once, known, of the model's datatype, with a shape of non-negative sizes that the
    model accepts and that its data fills exactly; every model input present."""
    by_name = {s.name: s for s in specs}
    inputs: dict[str, np.ndarray] = {}
    with as_kserve_errors():
        for tensor in payload.inputs:
            label = f"input '{tensor.name}'"
            if tensor.name in inputs:
                raise KServeInvalidInput(f"{label}: given more than once")
            shape = _declared_shape(tensor, by_name)
            reject_unsupported(label, tensor.parameters)
            datatype = by_name[tensor.name].datatype
            try:
                arr = np.asarray(tensor.as_numpy(), dtype=V2_TO_NUMPY[datatype])
            except Exception:  # noqa: BLE001 - numpy's words for it name no tensor
                arr = None
            if arr is None or list(arr.shape) != shape:
                raise _not_filled(tensor.name, shape, datatype)
            inputs[tensor.name] = arr
        check_inputs_given(inputs, by_name)
    return inputs


# a gRPC tensor's typed contents: one of these holds its values
_TYPED_CONTENTS = ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                   "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents")


def check_message_inputs(request: Any, specs: Sequence[TensorSpec],
                         check_batch: Callable[[int], object] | None = None) -> None:
    """A gRPC ``ModelInferRequest``'s inputs, checked before its typed contents are converted:
    each input's datatype and shape as the model accepts them, and its typed contents, where
    it has any, exactly as many values as that shape holds, and a batch ``check_batch``
    accepts. The conversion makes a Python value of each element while it holds
    the interpreter (60 MB of them took over a second); what passes here is at most the
    model's largest batch."""
    by_name = {s.name: s for s in specs}
    with as_kserve_errors():
        for tensor in request.inputs:
            shape = _declared_shape(tensor, by_name)
            if check_batch is not None and shape and by_name[tensor.name].shape[:1] == (-1,):
                check_batch(shape[0])
            given = sum(len(getattr(tensor.contents, f)) for f in _TYPED_CONTENTS)
            if given and given != math.prod(shape):
                raise _not_filled(tensor.name, shape, by_name[tensor.name].datatype)


def _requested_outputs(payload: InferRequest, specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The outputs the request names (each once, known, no unsupported parameter), in its
    order; every output where it names none."""
    requested = getattr(payload, "request_outputs", None) or []
    if not requested:
        return list(specs)
    by_name = {s.name: s for s in specs}
    out: list[TensorSpec] = []
    with as_kserve_errors():
        for item in requested:
            check_output(item.name, [s.name for s in out], by_name)
            reject_unsupported(f"output '{item.name}'", item.parameters)
            out.append(by_name[item.name])
    return out


# When a gRPC infer reached the servicer (the engine's clock): the host time of a
# latency-critical request is counted from there, as REST counts it from its first bytes.
GRPC_RECEIVED_AT: ContextVar[float | None] = ContextVar("deft_grpc_received_at", default=None)
# requests with more input elements than this are converted and checked off the event loop
# (typed contents become numpy arrays element by element: 8 MB took about 85 ms)
INLINE_INPUT_ELEMENTS = 1 << 16


def _elements(payload: InferRequest) -> int:
    """The request's input elements (a shape with a size that is not a count: none)."""
    return sum(math.prod(d if is_count(d) else 0 for d in t.shape) for t in payload.inputs)


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
        with as_kserve_errors():
            return [s.to_metadata() for s in self._deft.model(self.name).inputs]

    def get_output_types(self) -> list[dict[str, Any]]:
        with as_kserve_errors():
            return [s.to_metadata() for s in self._deft.model(self.name).outputs]

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        with as_kserve_errors():
            served = self._deft.model(self.name)
        _check_version(payload, served.version, self.name)
        if _elements(payload) > INLINE_INPUT_ELEMENTS:
            inputs = await asyncio.get_running_loop().run_in_executor(
                None, _checked_inputs, payload, served.inputs)
        else:
            inputs = _checked_inputs(payload, served.inputs)
        wanted = _requested_outputs(payload, served.outputs)
        with as_kserve_errors():
            outputs = await self._deft.infer(
                self.name, inputs,
                priority=_param(payload.parameters, "priority"),
                timeout_us=_param(payload.parameters, "timeout") or None,
                received_at=GRPC_RECEIVED_AT.get(),
                served=served,  # the version its inputs were checked against, reload or not
            )
        infer_outputs = []
        for spec in wanted:
            arr = outputs[spec.name]
            out = InferOutput(spec.name, list(arr.shape), NUMPY_TO_V2.get(arr.dtype, spec.datatype))
            out.set_data_from_numpy(arr, binary_data=True)  # raw_output_contents over gRPC
            if out.parameters:  # REST's binary extension's size, which means nothing here
                out.parameters.pop("binary_data_size", None)
            infer_outputs.append(out)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=infer_outputs,
            model_version=served.version,
            use_binary_outputs=payload.use_binary_outputs if hasattr(
                payload, "use_binary_outputs") else False,
        )
