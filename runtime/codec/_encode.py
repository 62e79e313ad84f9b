"""Encoding v2 inference responses (and requests, for clients and tests) and error bodies."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import orjson

from runtime.codec import _json, _tensor
from runtime.codec._types import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    RequestedOutput,
)
from runtime.tensors import V2_TO_NUMPY, TensorSpec

Binary = bool | Collection[str]
"""Which tensors go in binary form: all (True), none (False), or those named."""


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    output_specs: Sequence[TensorSpec] | None,
    binary: Binary = False,
    *,
    parameters: Mapping[str, object] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode a v2 ``infer`` response; returns the body and the headers to send with it.

    ``outputs`` are written in the mapping's order. The datatype of an output comes from its
    spec in ``output_specs`` (the array is cast within its kind, e.g. FP32 to FP16), else from
    the array's dtype. Binary outputs follow the JSON header; then the headers carry
    ``inference-header-content-length`` and ``content-type: application/octet-stream``, else
    ``content-type: application/json``. A BYTES output that is not UTF-8 is sent binary even
    where JSON was asked for, since a JSON string cannot carry it. NaN and Infinity in JSON
    data are written as the ``NaN``/``Infinity`` literals Python's JSON reads.
    Raises ``ValueError`` for an array that cannot be given its datatype (a model bug)."""
    doc: dict[str, object] = {"model_name": model_name}
    if model_version:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    specs = {spec.name: spec.datatype for spec in output_specs or ()}
    doc["outputs"], chunks, nonfinite = _encode_tensors(outputs, specs, binary)
    return _assemble(doc, chunks, nonfinite)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    request_id: str | None = None,
    parameters: Mapping[str, object] | None = None,
    outputs: Sequence[str | RequestedOutput] | None = None,
    binary: Binary = True,
) -> tuple[bytes, dict[str, str]]:
    """Encode a v2 ``infer`` request the way a client sends it (datatypes from the dtypes);
    the inverse of ``decode_request``. Used by benchmark clients and tests."""
    doc: dict[str, object] = {}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["inputs"], chunks, nonfinite = _encode_tensors(inputs, {}, binary)
    if outputs is not None:
        doc["outputs"] = [
            {"name": out}
            if isinstance(out, str)
            else {"name": out.name, "parameters": {"binary_data": out.binary_data}}
            for out in outputs
        ]
    return _assemble(doc, chunks, nonfinite)


def error_body(message: str) -> bytes:
    """The v2 error body ``{"error": message}``."""
    try:
        return orjson.dumps({"error": message})
    except TypeError:  # a message quoting a string orjson refuses (lone surrogates)
        return json.dumps({"error": message}).encode("ascii")


def _encode_tensors(
    arrays: Mapping[str, np.ndarray], datatypes: Mapping[str, str], binary: Binary
) -> tuple[list[dict[str, object]], list[bytes | memoryview], bool]:
    entries: list[dict[str, object]] = []
    chunks: list[bytes | memoryview] = []
    nonfinite = False
    for name, value in arrays.items():
        array = np.asarray(value)
        datatype = datatypes.get(name) or _tensor.datatype_of(array)
        array = _as_datatype(name, array, datatype)
        want_binary = binary if isinstance(binary, bool) else name in binary
        entry: dict[str, object] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        raw: bytes | memoryview | None = None
        if datatype == "BYTES":
            items = _tensor.as_bytes_items(array)
            if not want_binary:
                try:
                    entry["data"] = [item.decode("utf-8") for item in items]
                except UnicodeDecodeError:
                    want_binary = True
            if want_binary:
                raw = _tensor.bytes_to_binary(items)
        elif want_binary:
            raw = _tensor.fixed_to_binary(array, datatype)
        else:
            flat = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")).reshape(-1)
            if flat.dtype.kind == "f" and not np.isfinite(flat).all():
                nonfinite = True
            entry["data"] = flat
        if raw is not None:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        entries.append(entry)
    return entries, chunks, nonfinite


def _as_datatype(name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype not in V2_TO_NUMPY:
        raise ValueError(f"tensor '{name}': unknown datatype {datatype!r}")
    if datatype == "BYTES":
        if array.dtype.kind not in "SUO":
            raise ValueError(f"tensor '{name}': {array.dtype} array cannot be sent as BYTES")
        return array
    target = V2_TO_NUMPY[datatype]
    if array.dtype.newbyteorder("=") == target:
        return array
    if not np.can_cast(array.dtype, target, "same_kind"):
        raise ValueError(f"tensor '{name}': {array.dtype} array cannot be sent as {datatype}")
    return array.astype(target)


def _assemble(
    doc: dict[str, object], chunks: list[bytes | memoryview], nonfinite: bool
) -> tuple[bytes, dict[str, str]]:
    header = _json.dumps(doc, nonfinite)
    if not chunks:
        return header, {"content-type": JSON_CONTENT_TYPE}
    body = b"".join([header, *chunks])
    return body, {"content-type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
