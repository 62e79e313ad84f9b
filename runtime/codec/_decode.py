"""Decoding a v2 inference request body (JSON, or JSON header + binary tensor data)."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.codec import _json, _tensor
from runtime.codec._types import HEADER_LENGTH, InferRequest, Limits, RequestedOutput
from runtime.errors import InvalidInput, PayloadTooLarge
from runtime.tensors import V2_TO_NUMPY, TensorSpec

_MAX_DIMS = 32
# the most JSON text one tensor value can need, indented and separated: a request whose JSON
# is longer than this for every value of the model's largest batch carries something else
# (a value of 24 characters, nested five deep at an indent of 8, takes about 70)
JSON_BYTES_PER_VALUE = 128
JSON_SLACK_BYTES = 1024 * 1024
_DIGITS = re.compile(r"[0-9]{1,19}")
# tensor parameters of v2 extensions this server does not implement
UNSUPPORTED_PARAMS = ("shared_memory_region", "classification")


@dataclass(frozen=True)
class _Input:
    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    data: object
    binary_size: int | None


def decode_request(
    body: bytes | bytearray | memoryview,
    headers: Mapping[str, str],
    inputs: Sequence[TensorSpec] | None,
    limits: Limits,
    *,
    outputs: Sequence[TensorSpec] | None = None,
    max_batch_size: int | None = None,
) -> InferRequest:
    """Decode a v2 ``infer`` request body.

    Called by the HTTP layer (off the event loop) with the raw body and the request headers
    (lower-case keys). ``inputs``/``outputs``: the model's tensors to validate against, or None
    to accept any. Honours ``inference-header-content-length`` (binary tensor extension) and
    ``content-encoding`` gzip/deflate. Raises ``PayloadTooLarge`` for a body or tensor over
    ``limits`` and ``InvalidInput`` for every other problem; nothing else for any input.
    Where the model's largest request is known (``inputs`` with ``max_batch_size``), JSON
    longer than any request for it can need (:func:`json_bound`) is refused before it is
    parsed: parsing holds the interpreter, and junk parses into objects many times its
    size."""
    raw_body = memoryview(body).cast("B")
    if len(raw_body) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"request body is {len(raw_body)} bytes, more than the limit of {limits.max_body_bytes}"
        )
    buf = memoryview(_decompress(raw_body, headers.get("content-encoding"), limits))
    header_length = _header_length(headers.get(HEADER_LENGTH), len(buf))
    bound = json_bound(inputs, max_batch_size)
    text = header_length or len(buf)
    if bound is not None and text > bound:
        raise PayloadTooLarge(
            f"request JSON is {text} bytes, more than a request for this model can need "
            f"({bound} bytes: {JSON_BYTES_PER_VALUE} per value of its largest batch, and "
            f"{JSON_SLACK_BYTES}); large tensors go in the binary tensor extension"
        )
    if header_length:
        doc = _json.loads(buf[:header_length], "request header")
    else:
        doc = _json.loads(buf, "request")
    if not isinstance(doc, dict):
        raise InvalidInput(f"request must be a JSON object, got {type(doc).__name__}")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("request 'id' must be a string")
    parameters = _request_parameters(doc.get("parameters"))
    binary_default = bool(parameters.get("binary_data_output", False))  # checked a boolean
    wanted = _requested_outputs(doc.get("outputs"), binary_default, outputs)

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("request 'inputs' must be a list")
    specs = None if inputs is None else {spec.name: spec for spec in inputs}
    parsed: list[_Input] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_inputs):
        item = _parse_input(index, raw, limits)
        if item.name in seen:
            raise InvalidInput(f"input '{item.name}': given more than once")
        seen.add(item.name)
        if specs is not None:
            check_input(item.name, item.datatype, item.shape, specs)
        parsed.append(item)
    if specs is not None:
        check_inputs_given(seen, specs)

    arrays: dict[str, np.ndarray] = {}
    offset = header_length
    for item in parsed:
        if item.binary_size is None:
            flat = _tensor.from_json(item.name, item.datatype, item.data, item.count)
        else:
            if not header_length:
                raise InvalidInput(
                    f"input '{item.name}': binary_data_size given but the request has no "
                    f"binary data (header {HEADER_LENGTH} is missing)"
                )
            if offset + item.binary_size > len(buf):
                raise InvalidInput(
                    f"input '{item.name}': binary_data_size is {item.binary_size} but only "
                    f"{len(buf) - offset} bytes of the body are left (truncated body)"
                )
            flat = _tensor.from_binary(
                item.name, item.datatype, buf, offset, item.binary_size, item.count
            )
            offset += item.binary_size
        arrays[item.name] = flat.reshape(item.shape)
    if header_length and offset != len(buf):
        raise InvalidInput(
            f"request body has {len(buf) - offset} bytes after the last binary tensor"
        )
    return InferRequest(
        id=request_id,
        parameters=parameters,
        inputs=arrays,
        outputs=wanted,
        binary_data_output=binary_default,
    )


def json_bound(inputs: Sequence[TensorSpec] | None, max_batch_size: int | None) -> int | None:
    """The most JSON a request for a model with ``inputs`` can need: ``JSON_BYTES_PER_VALUE``
    for every value of its largest batch, and ``JSON_SLACK_BYTES``. None where that is not
    known: no inputs given, no batch bound, a variable dimension besides the batch, or a
    BYTES input (a value of any length)."""
    if inputs is None or max_batch_size is None:
        return None
    values = 0
    for spec in inputs:
        if spec.datatype == "BYTES" or -1 in spec.shape[1:]:
            return None
        n = max_batch_size if spec.shape and spec.shape[0] == -1 else 1
        values += n * math.prod(d for d in spec.shape if d != -1)
    return values * JSON_BYTES_PER_VALUE + JSON_SLACK_BYTES


def _decompress(body: memoryview, encoding: str | None, limits: Limits) -> bytes | memoryview:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"unsupported content-encoding {encoding!r}")
    wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limits.max_body_bytes + 1)
    except zlib.error as err:
        raise InvalidInput(f"request body is not valid {encoding} data: {err}") from None
    if len(out) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"decompressed request body is more than the limit of {limits.max_body_bytes} bytes"
        )
    if not inflater.eof or inflater.unused_data:
        raise InvalidInput(f"request body is not one complete {encoding} stream")
    return out


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return 0
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise InvalidInput(f"header {HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    length = int(text)
    if length == 0:
        raise InvalidInput(f"header {HEADER_LENGTH} must be positive")
    if length > body_length:
        raise InvalidInput(
            f"header {HEADER_LENGTH} is {length} but the body is {body_length} bytes"
        )
    return length


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


MAX_REQUEST_PARAMETER = (1 << 63) - 1  # the largest request-level priority or timeout


def _request_parameters(raw: object) -> dict[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("request 'parameters' must be an object")
    for key in ("priority", "timeout"):
        # at most what a v2 gRPC int64_param holds (JSON parsers read larger ones as floats)
        if key in raw and not (is_count(raw[key]) and raw[key] <= MAX_REQUEST_PARAMETER):
            raise InvalidInput(f"request parameter '{key}' must be a non-negative integer "
                               "of at most 2**63-1")
    if not isinstance(raw.get("binary_data_output", False), bool):
        raise InvalidInput("request parameter 'binary_data_output' must be a boolean")
    return raw


def _requested_outputs(
    raw: object, binary_default: bool, specs: Sequence[TensorSpec] | None
) -> tuple[RequestedOutput, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput("request 'outputs' must be a list")
    known = None if specs is None else {spec.name for spec in specs}
    wanted: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"output #{index}: must be an object with a string 'name'")
        name = item["name"]
        check_output(name, [out.name for out in wanted], known)
        params = _tensor_parameters(f"output '{name}'", item.get("parameters"))
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output '{name}': parameter 'binary_data' must be a boolean")
        wanted.append(RequestedOutput(name, binary))
    return tuple(wanted)


def _tensor_parameters(label: str, raw: object) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{label}: 'parameters' must be an object")
    reject_unsupported(label, raw)
    return raw


def _parse_input(index: int, raw: object, limits: Limits) -> _Input:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput(f"input #{index}: must be an object with a string 'name'")
    name = raw["name"]
    label = f"input '{name}'"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"{label}: unknown datatype {datatype!r}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise InvalidInput(f"{label}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > _MAX_DIMS:
        raise InvalidInput(f"{label}: shape has {len(shape)} dimensions, at most {_MAX_DIMS}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(
            f"{label}: shape {shape} holds {count} elements, more than the limit of "
            f"{limits.max_tensor_elements}"
        )
    params = _tensor_parameters(label, raw.get("parameters"))
    binary_size = params.get("binary_data_size")
    if binary_size is not None:
        if not is_count(binary_size):
            raise InvalidInput(f"{label}: binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise InvalidInput(f"{label}: has both 'data' and binary_data_size")
    elif "data" not in raw:
        raise InvalidInput(f"{label}: has neither 'data' nor binary_data_size")
    return _Input(name, datatype, tuple(shape), count, raw.get("data"), binary_size)


# -- checks against the model's tensors, shared by the REST decoder and the gRPC path ----


def reject_unsupported(label: str, parameters: Mapping[str, object] | None) -> None:
    """Refuse the parameters of v2 extensions this server does not implement."""
    for key in UNSUPPORTED_PARAMS:
        if parameters and key in parameters:
            raise InvalidInput(f"{label}: parameter '{key}' is not supported")


def check_input(
    name: str, datatype: str, shape: Sequence[int], specs: Mapping[str, TensorSpec]
) -> None:
    """An input the model has, of its datatype, in a shape it accepts."""
    spec = specs.get(name)
    if spec is None:
        raise InvalidInput(f"input '{name}': the model has no such input")
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input '{name}': datatype {datatype} but the model expects {spec.datatype}"
        )
    if not spec.accepts_shape(tuple(shape)):
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} does not match the model's "
            f"{list(spec.shape)}"
        )


def check_inputs_given(given: Collection[str], specs: Mapping[str, TensorSpec]) -> None:
    """Every input of the model is in the request."""
    missing = [name for name in specs if name not in given]
    if missing:
        raise InvalidInput(f"input '{missing[0]}': missing from the request")


def check_output(name: str, wanted: Collection[str], known: Collection[str] | None) -> None:
    """An output requested once (``wanted``: those before it) that the model has."""
    if name in wanted:
        raise InvalidInput(f"output '{name}': requested more than once")
    if known is not None and name not in known:
        raise InvalidInput(f"output '{name}': the model has no such output")
