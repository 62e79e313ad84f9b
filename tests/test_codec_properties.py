"""Properties of the v2 wire codec: round trips, and that no byte string gets an answer other
than a decoded request or ``InvalidInput``."""

from __future__ import annotations

import json
import zlib

import hypothesis.extra.numpy as hnp
import numpy as np
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.codec import (
    HEADER_LENGTH,
    InferRequest,
    Limits,
    decode_request,
    encode_request,
    encode_response,
)
from runtime.errors import InvalidInput
from runtime.tensors import V2_TO_NUMPY, TensorSpec

LIMITS = Limits(max_body_bytes=1 << 20, max_tensor_elements=1 << 12)
DATATYPES = list(V2_TO_NUMPY)
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
names = st.text(min_size=1, max_size=6)
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def tensors(draw, datatype: str | None = None, utf8: bool = False) -> np.ndarray:
    """An array of a v2 datatype; ``utf8``: BYTES elements are valid UTF-8."""
    datatype = datatype or draw(st.sampled_from(DATATYPES))
    shape = draw(shapes)
    if datatype != "BYTES":
        return draw(hnp.arrays(V2_TO_NUMPY[datatype], shape))
    items = st.text(max_size=6).map(str.encode) if utf8 else st.binary(max_size=6)
    return draw(hnp.arrays(object, shape, elements=items))


def tensor_sets(utf8: bool = False):
    return st.dictionaries(names, tensors(utf8=utf8), min_size=1, max_size=4)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        np.testing.assert_array_equal(actual, expected)  # NaN equals NaN here


def decode_or_invalid(body, headers, specs=None) -> InferRequest | None:
    """The contract under fuzzing: a request whose arrays match what it declared, or
    InvalidInput (PayloadTooLarge included); any other exception fails the test."""
    try:
        request = decode_request(body, headers, specs, LIMITS)
    except InvalidInput:
        return None
    assert isinstance(request, InferRequest)
    for array in request.inputs.values():
        assert isinstance(array, np.ndarray)
        assert array.size <= LIMITS.max_tensor_elements
    return request


def specs_for(arrays: dict[str, np.ndarray], data) -> list[TensorSpec]:
    specs = []
    for name, array in arrays.items():
        shape = tuple(-1 if d == 0 or data.draw(st.booleans()) else d for d in array.shape)
        specs.append(TensorSpec(name, triton_datatype(array), shape))
    return specs


def triton_datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else {v: k for k, v in V2_TO_NUMPY.items()}[array.dtype]


# --- round trips ------------------------------------------------------------------------


@PROPERTY
@given(arrays=tensor_sets(), data=st.data())
def test_decode_inverts_encode_request(arrays, data) -> None:
    binary = data.draw(st.sets(st.sampled_from(sorted(arrays))))
    body, headers = encode_request(arrays, request_id="r", binary=binary)
    request = decode_request(body, headers, specs_for(arrays, data), LIMITS)
    assert request.id == "r"
    assert list(request.inputs) == list(arrays)
    for name, array in arrays.items():
        assert_same(request.inputs[name], array)


@PROPERTY
@given(arrays=tensor_sets(utf8=True), data=st.data())
def test_decodes_what_tritonclient_sends(arrays, data) -> None:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), triton_datatype(array))
        tensor.set_data_from_numpy(array, binary_data=data.draw(st.booleans()))
        inputs.append(tensor)
    priority = data.draw(st.integers(0, 2**32))
    body, length = triton.InferenceServerClient.generate_request_body(inputs, priority=priority)
    headers = {} if length is None else {HEADER_LENGTH: str(length)}
    request = decode_request(body, headers, specs_for(arrays, data), LIMITS)
    assert request.priority == priority
    for name, array in arrays.items():
        assert_same(request.inputs[name], array)


@PROPERTY
@given(arrays=tensor_sets(), data=st.data())
def test_tritonclient_reads_encoded_response(arrays, data) -> None:
    binary = data.draw(st.sets(st.sampled_from(sorted(arrays))))
    body, headers = encode_response("m", "1", "r", arrays, None, binary)
    length = headers.get(HEADER_LENGTH)
    result = triton.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )
    for name, array in arrays.items():
        got = result.as_numpy(name)
        if array.dtype == object and "data" in result.get_output(name):
            got = np.array([s.encode() for s in got.reshape(-1)], dtype=object).reshape(got.shape)
        assert_same(got, array)


# --- fuzzing ----------------------------------------------------------------------------

header_values = st.one_of(
    st.none(), st.integers(-3, 300).map(str), st.text(max_size=5), st.just(" 12 ")
)
encodings = st.sampled_from([None, "identity", "gzip", "deflate", "br"])


@PROPERTY
@given(body=st.binary(max_size=300), length=header_values, encoding=encodings)
def test_garbage_bytes(body, length, encoding) -> None:
    headers = {}
    if length is not None:
        headers[HEADER_LENGTH] = length
    if encoding is not None:
        headers["content-encoding"] = encoding
    decode_or_invalid(body, headers)


@PROPERTY
@given(arrays=tensor_sets(), data=st.data())
def test_mutated_requests(arrays, data) -> None:
    body, headers = encode_request(arrays, binary=data.draw(st.booleans()))
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        mutation = data.draw(st.sampled_from(["truncate", "flip", "insert", "header", "gzip"]))
        position = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if mutation == "truncate":
            del body[position:]
        elif mutation == "flip" and body:
            body[position] ^= data.draw(st.integers(1, 255))
        elif mutation == "insert":
            body[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        elif mutation == "header":
            headers[HEADER_LENGTH] = str(
                max(0, int(headers.get(HEADER_LENGTH, len(body))) + data.draw(st.integers(-9, 9)))
            )
        else:
            body = bytearray(zlib.compress(bytes(body)))
            headers["content-encoding"] = "deflate"
    decode_or_invalid(bytes(body), headers)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


def maybe(strategy):
    """Mostly ``strategy``, sometimes any JSON value in its place."""
    return st.one_of(strategy, strategy, strategy, json_values)


scalar_data = st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=3))
input_docs = st.fixed_dictionaries(
    {},
    optional={
        "name": maybe(st.sampled_from(["a", "b", "c"])),
        "datatype": maybe(st.sampled_from(DATATYPES)),
        "shape": maybe(st.lists(st.integers(-2, 3), max_size=3)),
        "data": maybe(st.lists(scalar_data | st.lists(scalar_data, max_size=3), max_size=6)),
        "parameters": maybe(
            st.fixed_dictionaries({}, optional={"binary_data_size": maybe(st.integers(-2, 40))})
        ),
    },
)
request_docs = st.fixed_dictionaries(
    {},
    optional={
        "id": maybe(st.text(max_size=3)),
        "inputs": maybe(st.lists(input_docs, max_size=3)),
        "outputs": maybe(st.lists(st.fixed_dictionaries({"name": maybe(st.text(max_size=2))}))),
        "parameters": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "priority": maybe(st.integers(-1, 3)),
                    "timeout": maybe(st.integers(-1, 10**6)),
                    "binary_data_output": maybe(st.booleans()),
                },
            )
        ),
    },
)
spec_sets = st.none() | st.lists(
    st.builds(
        TensorSpec,
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(DATATYPES),
        st.lists(st.sampled_from([-1, 1, 2, 3]), max_size=3).map(tuple),
    ),
    max_size=3,
)


@PROPERTY
@given(doc=request_docs, tail=st.binary(max_size=48), specs=spec_sets, split=st.booleans())
def test_structured_garbage(doc, tail, specs, split) -> None:
    header = json.dumps(doc).encode()
    headers = {HEADER_LENGTH: str(len(header))} if split else {}
    request = decode_or_invalid(header + tail if split else header, headers, specs)
    if request is not None and specs is not None:
        assert sorted(request.inputs) == sorted({spec.name for spec in specs})


tweaks = {
    "name": st.sampled_from(["a", "b", "", "x"]) | json_values,
    "datatype": st.sampled_from(DATATYPES) | json_values,
    "shape": st.lists(st.integers(-1, 5), max_size=4) | json_values,
    "data": st.lists(scalar_data, max_size=8) | json_values,
    "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 80)}) | json_values,
}


@PROPERTY
@given(arrays=tensor_sets(), data=st.data())
def test_nearly_valid_requests(arrays, data) -> None:
    """One field of one input of a valid request replaced: reaches the data paths."""
    body, headers = encode_request(arrays, binary=data.draw(st.booleans()))
    length = int(headers.get(HEADER_LENGTH, len(body)))
    doc = json.loads(body[:length])
    entry = doc["inputs"][data.draw(st.integers(0, len(doc["inputs"]) - 1))]
    for _ in range(data.draw(st.integers(1, 2))):
        field = data.draw(st.sampled_from(sorted(tweaks)))
        entry[field] = data.draw(tweaks[field])
    header = json.dumps(doc).encode()
    if HEADER_LENGTH in headers:
        headers = {HEADER_LENGTH: str(len(header))}
    specs = specs_for(arrays, data) if data.draw(st.booleans()) else None
    decode_or_invalid(header + body[length:], headers, specs)
