"""The v2 wire codec against the bytes tritonclient itself sends and reads."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as triton

from runtime.codec import (
    HEADER_LENGTH,
    InferRequest,
    Limits,
    RequestedOutput,
    decode_request,
    encode_request,
    encode_response,
    error_body,
)
from runtime.errors import InvalidInput
from runtime.tensors import TensorSpec

LIMITS = Limits()

SAMPLES = {
    "FP32": np.array([[0.5, -1.25, 3.0e-7], [np.pi, 1e30, -0.0]], dtype=np.float32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], dtype=np.int64),
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "FP16": np.array([[0.1, -2.5, 65504.0], [6e-8, 1.0, -0.0]], dtype=np.float16),
    "BYTES": np.array(
        [[b"", b"ab", "\u00e9t\u00e9".encode()], [b"x" * 40, b"\n", b"z"]], dtype=object
    ),
}


def triton_body(inputs, **kwargs) -> tuple[bytes, dict[str, str]]:
    """The body and headers tritonclient.http sends for these inputs (no Content-Type)."""
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return body, ({} if header_length is None else {HEADER_LENGTH: str(header_length)})


def triton_input(name: str, array: np.ndarray, datatype: str, binary: bool):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def triton_result(body: bytes, headers: dict[str, str]) -> triton.InferResult:
    length = headers.get(HEADER_LENGTH)
    return triton.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        np.testing.assert_array_equal(actual, expected)


def req(*inputs: object, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def x(**over: object) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0], **over}


def ids(**over: object) -> dict:
    return {"name": "ids", "datatype": "INT64", "shape": [3], "data": [1, 2, 3], **over}


def good(**extra: object) -> bytes:
    """A request SPECS accepts, plus top-level fields."""
    return req(x(), ids(), **extra)


def one(datatype: str, data: list) -> bytes:
    return req({"name": "t", "datatype": datatype, "shape": [len(data)], "data": data})


# --- requests from tritonclient ---------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_decodes_tritonclient_request(datatype: str, binary: bool) -> None:
    array = SAMPLES[datatype]
    body, headers = triton_body(
        [triton_input("x", array, datatype, binary)],
        outputs=[triton.InferRequestedOutput("y", binary_data=False)],
        request_id="req-1",
        priority=1,
        timeout=2500,
        parameters={"tag": "a"},
    )
    spec = TensorSpec("x", datatype, (-1, 3))
    request = decode_request(body, headers, [spec], LIMITS)
    assert request.id == "req-1"
    assert request.parameters == {"priority": 1, "timeout": 2500, "tag": "a"}
    assert (request.priority, request.timeout_us) == (1, 2500)
    assert request.outputs == (RequestedOutput("y", False),)
    assert request.binary_data_output is False
    assert list(request.inputs) == ["x"]
    assert_same(request.inputs["x"], array)


def test_decodes_mixed_binary_and_json_inputs_in_order() -> None:
    inputs = [
        triton_input("a", SAMPLES["FP32"], "FP32", True),
        triton_input("b", SAMPLES["INT64"], "INT64", False),
        triton_input("c", SAMPLES["BYTES"], "BYTES", True),
        triton_input("d", SAMPLES["FP16"], "FP16", True),
    ]
    body, headers = triton_body(inputs)
    request = decode_request(body, headers, None, LIMITS)
    assert list(request.inputs) == ["a", "b", "c", "d"]
    for name, datatype in zip("abcd", ["FP32", "INT64", "BYTES", "FP16"], strict=True):
        assert_same(request.inputs[name], SAMPLES[datatype])
    # tritonclient asks for binary outputs when it names none
    assert request.outputs == ()
    assert request.binary_data_output is True
    assert request.output_plan(["p", "q"]) == (("p", True), ("q", True))


def test_requested_outputs_fall_back_to_request_default() -> None:
    doc = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "p"}, {"name": "q", "parameters": {"binary_data": False}}],
    }
    request = decode_request(json.dumps(doc).encode(), {}, None, LIMITS)
    assert request.outputs == (("p", True), ("q", False))
    assert request.output_plan(["q", "p", "r"]) == (("p", True), ("q", False))
    with pytest.raises(InvalidInput, match="'p'"):
        request.output_plan(["q"])


def test_json_with_content_type_and_nested_or_flat_data() -> None:
    for data in ([[1, 2, 3], [4, 5, 6]], [1, 2, 3, 4, 5, 6], [[[1], [2], [3]], [[4], [5], [6]]]):
        doc = {
            "id": "n",
            "inputs": [{"name": "x", "datatype": "UINT8", "shape": [2, 3], "data": data}],
        }
        request = decode_request(
            json.dumps(doc).encode(), {"content-type": "application/json"}, None, LIMITS
        )
        assert_same(request.inputs["x"], np.arange(1, 7, dtype=np.uint8).reshape(2, 3))


def test_json_nan_and_infinity_are_values() -> None:
    array = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    for binary in (True, False):
        body, headers = triton_body([triton_input("x", array, "FP32", binary)])
        got = decode_request(body, headers, [TensorSpec("x", "FP32", (4,))], LIMITS).inputs["x"]
        np.testing.assert_array_equal(got, array)


def test_uint64_json_beyond_int64() -> None:
    array = np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)
    body, headers = triton_body([triton_input("x", array, "UINT64", False)])
    assert_same(decode_request(body, headers, None, LIMITS).inputs["x"], array)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_body(encoding: str) -> None:
    body, headers = triton_body([triton_input("x", SAMPLES["FP32"], "FP32", True)])
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    request = decode_request(packed, {**headers, "content-encoding": encoding}, None, LIMITS)
    assert_same(request.inputs["x"], SAMPLES["FP32"])


def test_binary_inputs_view_the_body_when_aligned() -> None:
    array = np.arange(12, dtype=np.float32)
    body, headers = encode_request({"x": array})
    pad = (-int(headers[HEADER_LENGTH])) % 4
    header = body[: int(headers[HEADER_LENGTH])] + b" " * pad
    body = bytearray(header + body[len(header) - pad :])
    headers = {HEADER_LENGTH: str(len(header))}
    got = decode_request(body, headers, None, LIMITS).inputs["x"]
    assert np.shares_memory(got, np.frombuffer(body, dtype=np.uint8))
    assert got.flags.writeable
    # bytes bodies give read-only views; unaligned data is copied and aligned
    got = decode_request(bytes(body), headers, None, LIMITS).inputs["x"]
    assert not got.flags.writeable
    body, headers = encode_request({"x": array})
    got = decode_request(
        b" " + body, {HEADER_LENGTH: str(int(headers[HEADER_LENGTH]) + 1)}, None, LIMITS
    ).inputs["x"]
    assert got.flags.aligned
    assert_same(got, array)


def test_binary_bool_nonzero_bytes_are_true() -> None:
    header = req(
        {"name": "b", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}}
    )
    body = header + bytes([0, 1, 7])
    got = decode_request(body, {HEADER_LENGTH: str(len(header))}, None, LIMITS).inputs["b"]
    assert got.tolist() == [False, True, True]


def test_empty_and_scalar_tensors() -> None:
    inputs = {
        "empty": np.zeros((2, 0), dtype=np.int32),
        "scalar": np.array(2.5, dtype=np.float64),
        "no_strings": np.empty((0,), dtype=object),
    }
    for binary in (True, False):
        body, headers = encode_request(inputs, binary=binary)
        request = decode_request(body, headers, None, LIMITS)
        for name, array in inputs.items():
            assert_same(request.inputs[name], array)


# --- responses read by tritonclient -----------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tritonclient_reads_response(datatype: str, binary: bool) -> None:
    array = SAMPLES[datatype]
    body, headers = encode_response("m", "2", "req-9", {"y": array}, None, binary)
    assert headers["content-type"] == ("application/octet-stream" if binary else "application/json")
    assert (HEADER_LENGTH in headers) is binary
    result = triton_result(body, headers)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "m",
        "2",
        "req-9",
    )
    got = result.as_numpy("y")
    if datatype == "BYTES" and not binary:  # tritonclient gives JSON strings back as str
        got = np.array([s.encode() for s in got.reshape(-1)], dtype=object).reshape(got.shape)
    assert_same(got, array)


def test_response_mixes_binary_and_json_outputs() -> None:
    outputs = {"a": SAMPLES["FP16"], "b": SAMPLES["INT64"], "c": SAMPLES["BOOL"]}
    body, headers = encode_response("m", None, None, outputs, None, {"a", "c"})
    result = triton_result(body, headers)
    response = result.get_response()
    assert "id" not in response and "model_version" not in response
    assert [out["name"] for out in response["outputs"]] == ["a", "b", "c"]
    assert "data" in response["outputs"][1] and "data" not in response["outputs"][0]
    for name, array in outputs.items():
        assert_same(result.as_numpy(name), array)


def test_response_nonfinite_json_and_non_utf8_bytes() -> None:
    floats = np.array([np.nan, np.inf, -np.inf, 0.25], dtype=np.float32)
    raw = np.array([b"\xff\xfe", b"ok"], dtype=object)
    body, headers = encode_response("m", "1", None, {"f": floats, "s": raw}, None, False)
    result = triton_result(body, headers)
    np.testing.assert_array_equal(result.as_numpy("f"), floats)
    # a JSON string cannot hold these bytes, so this output went binary
    assert result.get_output("s")["parameters"]["binary_data_size"] == 12
    assert result.as_numpy("s").tolist() == raw.tolist()


def test_response_casts_to_spec_datatype() -> None:
    spec = TensorSpec("y", "FP16", (-1,))
    body, headers = encode_response("m", "1", None, {"y": np.ones(3)}, [spec], True)
    assert_same(triton_result(body, headers).as_numpy("y"), np.ones(3, dtype=np.float16))
    with pytest.raises(ValueError, match="'y'"):
        encode_response("m", "1", None, {"y": np.ones(3)}, [TensorSpec("y", "INT8", (3,))])


def test_error_body() -> None:
    assert json.loads(error_body("input 'x': bad")) == {"error": "input 'x': bad"}
    assert json.loads(error_body("lone \ud800")) == {"error": "lone \ud800"}


def test_bodies_match_the_v2_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    import os
    from pathlib import Path

    spec_dir = Path(os.environ.get("KSERVE_SPEC_DIR", Path(__file__).parents[2] / "shared/kserve"))
    if not (spec_dir / "rest_predict_v2.yaml").exists():
        pytest.skip(f"rest_predict_v2.yaml (from KServe docs/predict-api/v2/) not in {spec_dir}")
    api = yaml.safe_load((spec_dir / "rest_predict_v2.yaml").read_text())
    schemas = api["components"]["schemas"]

    def check(doc: object, name: str) -> None:
        schema = {**schemas[name], "components": {"schemas": schemas}}
        jsonschema.validate(doc, schema)

    body, _ = encode_response("m", "1", "i", {"y": SAMPLES["FP32"], "s": SAMPLES["BYTES"]}, None)
    check(json.loads(body), "inference_response")
    body, _ = encode_request({"x": SAMPLES["INT64"]}, request_id="i", binary=False)
    check(json.loads(body), "inference_request")
    check(json.loads(error_body("boom")), "inference_error_response")


# --- validation -------------------------------------------------------------------------

SPECS = [TensorSpec("x", "FP32", (-1, 2)), TensorSpec("ids", "INT64", (3,))]
GZIP = {"content-encoding": "gzip"}


def binary_x(size: object, payload: bytes) -> tuple[bytes, dict[str, str]]:
    header = req(
        {
            "name": "x",
            "datatype": "FP32",
            "shape": [1, 2],
            "parameters": {"binary_data_size": size},
        },
        ids(),
    )
    return header + payload, {HEADER_LENGTH: str(len(header))}


def hl(value: str) -> dict[str, str]:
    return {HEADER_LENGTH: value}


NO_X_DATA = {"name": "x", "datatype": "FP32", "shape": [1, 2]}
OUT_PARAMS = [{"name": "y", "parameters": {"classification": 3}}]

# (body, headers, message fragment), decoded against SPECS
INVALID = {
    "unknown input": (req(x(), ids(), x(name="z")), {}, "'z': the model has no such"),
    "missing input": (req(x()), {}, "'ids': missing"),
    "wrong datatype": (req(x(datatype="FP64"), ids()), {}, "'x': datatype FP64"),
    "shape mismatch": (req(x(shape=[2, 1]), ids()), {}, "'x': shape [2, 1] does not"),
    "rank mismatch": (req(x(shape=[2]), ids()), {}, "'x': shape [2] does not"),
    "too few elements": (req(x(shape=[2, 2]), ids()), {}, "'x': shape holds 4"),
    "too many elements": (req(x(), ids(data=[1, 2, 3, 4])), {}, "'ids': shape holds 3"),
    "data not a list": (req(x(data=1.0), ids()), {}, "'x': data must be a list"),
    "strings as numbers": (req(x(data=["1", "2"]), ids()), {}, "'x': data holds"),
    "null in data": (req(x(data=[1.0, None]), ids()), {}, "'x': data holds"),
    "float as int": (req(x(), ids(data=[1, 2.5, 3])), {}, "'ids': data holds"),
    "bool as float": (req(x(data=[True, False]), ids()), {}, "'x': data holds"),
    "unknown datatype": (req(x(datatype="FP8")), {}, "'x': unknown datatype"),
    "negative dim": (req(x(shape=[-1, 2])), {}, "'x': shape must"),
    "float dim": (req(x(shape=[1.0, 2])), {}, "'x': shape must"),
    "bool dim": (req(x(shape=[True, 2])), {}, "'x': shape must"),
    "shape not a list": (req(x(shape="1,2")), {}, "'x': shape must"),
    "too many dims": (req(x(shape=[1] * 40, data=[1.0])), {}, "'x': shape has 40"),
    "duplicate input": (req(x(), x(), ids()), {}, "'x': given more than once"),
    "nameless input": (req({"datatype": "FP32"}), {}, "input #0"),
    "input not object": (req(x(), 3), {}, "input #1"),
    "no data": (req(NO_X_DATA, ids()), {}, "'x': has neither"),
    "data and binary": (req(x(parameters={"binary_data_size": 8}), ids()), {}, "'x': has both"),
    "binary without header": (
        req({**NO_X_DATA, "parameters": {"binary_data_size": 8}}, ids()),
        {},
        "'x': binary_data_size given",
    ),
    "shared memory": (
        req(x(parameters={"shared_memory_region": "r"}), ids()),
        {},
        "'x': parameter 'shared_memory_region'",
    ),
    "binary size mismatch": (*binary_x(4, b"\0" * 4), "'x': binary_data_size is 4"),
    "binary size negative": (*binary_x(-8, b"\0" * 8), "'x': binary_data_size must"),
    "binary size not int": (*binary_x("8", b"\0" * 8), "'x': binary_data_size must"),
    "truncated body": (*binary_x(8, b"\0" * 5), "'x': binary_data_size is 8 but only 5"),
    "leftover bytes": (*binary_x(8, b"\0" * 9), "1 bytes after the last"),
    "header longer than body": (good(), hl("9999"), "is 9999 but the body"),
    "header not integer": (good(), hl("12a"), "'12a'"),
    "header negative": (good(), hl("-5"), "'-5'"),
    "header zero": (good(), hl("0"), "positive"),
    "header cuts json": (good(), hl("10"), "not valid JSON"),
    "not utf-8": (b'{"inputs": [], "id": "\xff"}', {}, "UTF-8"),
    "not json": (b"inputs=1", {}, "not valid JSON"),
    "empty body": (b"", {}, "not valid JSON"),
    "json array": (b"[]", {}, "JSON object"),
    "json string": (b'"hi"', {}, "JSON object"),
    "inputs not list": (b'{"inputs": {"x": 1}}', {}, "'inputs' must be a list"),
    "inputs missing": (b'{"id": "1"}', {}, "'inputs' must be a list"),
    "id not string": (good(id=5), {}, "'id'"),
    "parameters not object": (good(parameters=[1]), {}, "'parameters'"),
    "outputs not list": (good(outputs={"name": "y"}), {}, "'outputs'"),
    "duplicate output": (good(outputs=[{"name": "y"}] * 2), {}, "'y': requested more"),
    "classification": (good(outputs=OUT_PARAMS), {}, "'y': parameter 'classification'"),
    "binary_data not bool": (
        good(outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
        {},
        "'y': parameter 'binary_data'",
    ),
    "binary_data_output not bool": (
        good(parameters={"binary_data_output": "yes"}),
        {},
        "'binary_data_output'",
    ),
    "unknown encoding": (good(), {"content-encoding": "br"}, "'br'"),
    "bad gzip": (b"\x1f\x8b not gzip", GZIP, "not valid gzip"),
    "gzip with trailing bytes": (gzip.compress(good()) + b"x", GZIP, "one complete gzip"),
    "truncated gzip": (gzip.compress(good())[:-9], GZIP, "one complete gzip"),
}
for key, value in [("priority", -1), ("priority", 1.5), ("priority", "1"), ("priority", True)]:
    INVALID[f"priority={value!r}"] = (good(parameters={key: value}), {}, "'priority'")
for value in [-1, 2.0, None, "10"]:
    INVALID[f"timeout={value!r}"] = (good(parameters={"timeout": value}), {}, "'timeout'")

# decoded without specs: what the data alone gets wrong
INVALID_DATA = {
    "int out of range": (one("UINT8", [256]), "'t': data holds values outside the UINT8"),
    "negative unsigned": (one("UINT32", [-1]), "'t': data holds values outside"),
    "int64 overflow": (one("INT64", [2**63]), "'t': data holds values outside"),
    "uint64 overflow": (one("UINT64", [0, 2**64]), "'t': data holds values that are not"),
    "bytes not strings": (one("BYTES", [1]), "'t': BYTES data must be strings"),
    "bool from ints": (one("BOOL", [1]), "'t': data holds values that are not valid BOOL"),
    "ragged data": (
        req({"name": "t", "datatype": "FP32", "shape": [3], "data": [[1.0], [2.0, 3.0]]}),
        "'t': data is not a regular list",
    ),
    "deep nesting": (
        req(
            {
                "name": "t",
                "datatype": "INT8",
                "shape": [1],
                "data": json.loads("[" * 70 + "1" + "]" * 70),
            }
        ),
        "'t': data is not a regular list",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_request(case: str) -> None:
    body, headers, fragment = INVALID[case]
    with pytest.raises(InvalidInput) as err:
        decode_request(body, headers, SPECS, LIMITS)
    assert type(err.value) is InvalidInput
    assert fragment in str(err.value)


@pytest.mark.parametrize("case", list(INVALID_DATA))
def test_invalid_data(case: str) -> None:
    body, fragment = INVALID_DATA[case]
    with pytest.raises(InvalidInput) as err:
        decode_request(body, {}, None, LIMITS)
    assert type(err.value) is InvalidInput
    assert fragment in str(err.value)


def test_unknown_requested_output_with_output_specs() -> None:
    body = good(outputs=[{"name": "nope"}])
    with pytest.raises(InvalidInput, match="output 'nope'"):
        decode_request(body, {}, SPECS, LIMITS, outputs=[TensorSpec("y", "FP32", (1,))])


def test_wildcard_dims_and_no_specs_accept_any_shape() -> None:
    body = req(x(shape=[3, 2], data=[0.0] * 6), ids())
    assert decode_request(body, {}, SPECS, LIMITS).inputs["x"].shape == (3, 2)
    body = req(x(name="free", shape=[2, 1, 1]))
    assert decode_request(body, {}, None, LIMITS).inputs["free"].shape == (2, 1, 1)


BYTES_INPUT = {
    "name": "s",
    "datatype": "BYTES",
    "shape": [2],
    "parameters": {"binary_data_size": 0},
}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x02\0\0\0ab\x05\0\0\0abc", "element 1 claims 5 bytes"),
        (b"\x02\0\0\0ab\x01\0", "ends inside element 1"),
        (b"\x01\0\0\0a\x01\0\0\0bEXTRA", "take 10"),
    ],
)
def test_invalid_binary_bytes(payload: bytes, fragment: str) -> None:
    header = req({**BYTES_INPUT, "parameters": {"binary_data_size": len(payload)}})
    with pytest.raises(InvalidInput, match=fragment):
        decode_request(header + payload, {HEADER_LENGTH: str(len(header))}, None, LIMITS)


def test_payload_limits() -> None:
    from runtime.errors import PayloadTooLarge

    body = good()
    with pytest.raises(PayloadTooLarge, match="body"):
        decode_request(body, {}, SPECS, Limits(max_body_bytes=len(body) - 1))
    assert isinstance(
        decode_request(body, {}, SPECS, Limits(max_body_bytes=len(body))), InferRequest
    )
    with pytest.raises(PayloadTooLarge, match="'ids'"):
        decode_request(body, {}, SPECS, Limits(max_tensor_elements=2))
    huge = req({**NO_X_DATA, "shape": [2**40, 2**40], "parameters": {"binary_data_size": 8}})
    with pytest.raises(PayloadTooLarge, match="'x'"):
        decode_request(huge, {}, None, LIMITS)
    bomb = gzip.compress(b" " * 100_000)
    with pytest.raises(PayloadTooLarge, match="decompressed"):
        decode_request(bomb, {"content-encoding": "gzip"}, None, Limits(max_body_bytes=50_000))


def test_json_is_bounded_by_what_the_model_s_largest_batch_can_need() -> None:
    from runtime.codec._decode import JSON_BYTES_PER_VALUE, JSON_SLACK_BYTES, json_bound
    from runtime.errors import PayloadTooLarge

    specs = [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("ids", "INT64", (3,))]
    assert json_bound(specs, 8) == (8 * 4 + 3) * JSON_BYTES_PER_VALUE + JSON_SLACK_BYTES
    assert json_bound(specs, None) is None and json_bound(None, 8) is None
    assert json_bound([TensorSpec("x", "FP32", (-1, -1))], 8) is None  # any length
    assert json_bound([TensorSpec("s", "BYTES", (-1, 1))], 8) is None  # a value of any size
    # the largest batch, pretty-printed and nested five deep, with values at their longest,
    # fits the allowance per value without the slack
    wide = [TensorSpec("x", "FP32", (-1, 3, 8, 16, 16))]
    rows = np.full((4, 3, 8, 16, 16), -1.2345678e-30, dtype=np.float32)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape),
                       "data": rows.astype(float).tolist()}]}
    text = json.dumps(doc, indent=8).encode()
    assert len(text) / rows.size > 64 and len(text) < rows.size * JSON_BYTES_PER_VALUE
    assert decode_request(text, {}, wide, LIMITS, max_batch_size=4).inputs["x"].shape == \
        rows.shape
    # junk that no request for the model needs is refused before it is parsed
    junk = b'{"parameters":{"x":[' + b"{}," * (json_bound(specs, 8) // 3) + b'{}]},"inputs":[]}'
    with pytest.raises(PayloadTooLarge, match="binary tensor extension"):
        decode_request(junk, {}, specs, LIMITS, max_batch_size=8)
    with pytest.raises(InvalidInput, match="missing"):  # without the bound it is parsed
        decode_request(junk, {}, specs, LIMITS)
    # the binary extension's JSON header is bounded the same way
    body = junk + np.zeros(3, np.int64).tobytes()
    with pytest.raises(PayloadTooLarge, match="request JSON"):
        decode_request(body, {HEADER_LENGTH: str(len(junk))}, specs, LIMITS, max_batch_size=8)


def test_json_with_nan_reads_integers_past_64_bits_as_the_strict_parser_does() -> None:
    for value in (10**20, 10**400):
        doc = b'{"parameters":{"x":%d},"inputs":[{"name":"x","datatype":"FP32","shape":[2],' \
              b'"data":[NaN,%d]}]}' % (value, value)
        got = decode_request(doc, {}, None, LIMITS).inputs["x"]
        assert np.isnan(got[0]) and got[1] == np.float32(float(str(value)))  # 1e20, inf
