"""Fuzzing the v2 REST surface in process, against a real engine serving torch models.

Cases come from three sources: requests generated from the v2 OpenAPI document's schemas
(every route it names, path parameters and request bodies); valid requests with one place
replaced by a schema value, by any JSON value, or removed; and byte-level damage (random
shapes, datatypes and byte lengths, truncated and oversized bodies, non-UTF-8 BYTES,
NaN/Infinity, compressed bodies).

The contract, for every case: a 200 whose body matches the spec's response schema, or a 4xx
whose body is a v2 error ``{"error": "..."}``; never a 5xx, never a hang. The server keeps
answering valid requests, and nothing it admitted stays outstanding.

``DEFT_FUZZ_SCALE=N`` runs N times as many cases (the default run takes a few seconds).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import quote

import hypothesis.extra.numpy as hnp
import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.codec import HEADER_LENGTH, Limits, encode_request
from runtime.tensors import V2_TO_NUMPY
from scheduler.priority import Priority
from tests.reliability.schema_strategies import SchemaStrategies, json_values
from tests.reliability.support import TALLY, load_v2_spec, serving, spec_dir, valid_body
from tests.runtime.helpers import served_mlp

SCALE = max(1, int(os.environ.get("DEFT_FUZZ_SCALE", "1")))
LIMITS = Limits(max_body_bytes=64 * 1024, max_tensor_elements=4096)
HANG_S = 10.0
DATATYPES = sorted(V2_TO_NUMPY)


def fuzz(n: int) -> settings:
    return settings(max_examples=n * SCALE, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


class Harness:
    """Sends one case, waits for its answer (at most ``HANG_S``), checks the contract and
    counts it. Without the v2 spec (``spec`` None) answers are checked for the contract's
    shape (a 2xx or 4xx, an error's ``{"error": str}``) but not against its schemas."""

    def __init__(self, client: Any, engine: Any, spec: dict[str, Any] | None) -> None:
        self.client = client
        self.engine = engine
        self.spec = spec
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="fuzz-client")
        self.sent = 0
        self._validators: dict[str, jsonschema.Validator] = {}

    def validator(self, name: str) -> jsonschema.Validator | None:
        if self.spec is None:
            return None
        if name not in self._validators:
            schema = {"$ref": f"#/components/schemas/{name}", "components": self.spec["components"]}
            self._validators[name] = jsonschema.Draft7Validator(schema)
        return self._validators[name]

    def send(self, kind: str, method: str, url: str, content: Any = b"",
             headers: dict[str, str] | None = None, ok_schema: str | None = "inference_response"):
        # header values as raw bytes (a client may send any octet but CR, LF and NUL)
        raw_headers = {k: _octets(v) for k, v in (headers or {}).items()}
        future = self.pool.submit(self.client.request, method, url, content=content,
                                  headers=raw_headers)
        try:
            r = future.result(timeout=HANG_S)
        except FutureTimeout:
            pytest.fail(f"{kind}: no answer within {HANG_S} s to {method} {url}")
        TALLY.add(kind, r.status_code)
        self.check(r, ok_schema)
        self.sent += 1
        if self.sent % 25 == 0:
            self.assert_serving()
        return r

    def check(self, r: Any, ok_schema: str | None) -> None:
        assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code != 200:
            doc = json.loads(r.content)
            assert isinstance(doc, dict) and isinstance(doc.get("error"), str), r.text[:300]
            self._validate("inference_error_response", doc)
            return
        header = r.headers.get(HEADER_LENGTH)
        raw = r.content[: int(header)] if header else r.content
        doc = json.loads(raw)  # Python's reader: NaN/Infinity literals, as the encoder writes
        assert isinstance(doc, dict)
        if header:
            # binary tensor extension: an output's data follows the JSON header, and the
            # output says how many bytes it takes instead of carrying "data"
            sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]
                     if "binary_data_size" in o.get("parameters", {})]
            assert sum(sizes) == len(r.content) - int(header)
            for o in doc["outputs"]:
                if "binary_data_size" in o.get("parameters", {}):
                    o["data"] = []
        if ok_schema is not None:
            self._validate(ok_schema, doc)

    def _validate(self, schema: str, doc: Any) -> None:
        validator = self.validator(schema)
        if validator is not None:
            validator.validate(doc)

    def assert_serving(self) -> None:
        r = self.client.post("/v2/models/mlp/infer", content=valid_body())
        assert r.status_code == 200, r.text
        assert len(r.json()["outputs"][0]["data"]) == 3


@pytest.fixture(scope="module")
def spec():
    return load_v2_spec()


@pytest.fixture(scope="module")
def harness():
    # the cases that do not come from the spec run without it, checked for the contract's
    # shape; the spec's schemas check every answer where it is found
    spec = load_v2_spec() if spec_dir() is not None else None
    batch, _ = served_mlp("mlp", max_batch_size=8, max_queue_size=64)
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000, max_batch_size=4)
    with serving([batch, lc], limits=LIMITS) as (client, engine):
        h = Harness(client, engine, spec)
        yield h
        h.pool.shutdown(wait=False)


# --- requests generated from the spec --------------------------------------------------------


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """(method, path template, operation, path parameter names) for every operation."""
    ops = []
    for path, item in spec["paths"].items():
        params = [p["name"] for p in item.get("parameters", []) if p.get("in") == "path"]
        for method in ("get", "post", "put", "delete"):
            if method in item:
                ops.append((method.upper(), path, item[method], params))
    return ops


def ok_schema_of(op: dict[str, Any]) -> str | None:
    content = op.get("responses", {}).get("200", {}).get("content", {})
    ref = content.get("application/json", {}).get("schema", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def hints() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "request_input.name": st.just("x"),
        "request_input.datatype": st.sampled_from(DATATYPES),
        "request_input.shape": st.tuples(st.integers(0, 9), st.just(4)).map(list),
        "request_output.name": st.just("y"),
        "parameters": st.fixed_dictionaries({}, optional={
            "priority": st.integers(-1, 3) | json_values,
            "timeout": st.integers(-1, 10**7) | json_values,
            "binary_data_output": st.booleans() | json_values,
            "binary_data": st.booleans() | json_values,
            "binary_data_size": st.integers(-1, 64) | json_values,
        }),
    }


@st.composite
def spec_requests(draw, spec):
    method, template, op, params = draw(st.sampled_from(operations(spec)))
    path = template
    for name in params:
        known = {"MODEL_NAME": st.sampled_from(["mlp", "lc"]), "MODEL_VERSION": st.just("1")}
        value = draw(known.get(name, st.nothing()) | st.text(max_size=10))
        path = path.replace("${" + name + "}", quote(value, safe=""))
    body = b""
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if ref is not None:
        doc = draw(SchemaStrategies(spec, hints()).of(ref))
        body = json.dumps(doc, allow_nan=True).encode()
    return method, path, body, ok_schema_of(op)


def test_requests_generated_from_the_spec(harness, spec):
    @fuzz(120)
    @given(case=spec_requests(spec))
    def run(case):
        method, path, body, ok_schema = case
        harness.send("spec-generated", method, path, body, ok_schema=ok_schema)

    run()


# --- valid requests with one place changed ---------------------------------------------------


@st.composite
def valid_docs(draw) -> dict[str, Any]:
    n = draw(st.integers(1, 8))
    data = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=4 * n, max_size=4 * n))
    doc: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 4],
                                       "data": data}]}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=6))
    if draw(st.booleans()):
        doc["parameters"] = {"priority": draw(st.integers(0, 3)),
                             "binary_data_output": draw(st.booleans())}
    if draw(st.booleans()):
        doc["outputs"] = [{"name": "y", "parameters": {"binary_data": draw(st.booleans())}}]
    return doc


def replace_at(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {} if not isinstance(key, int) else [])
        elif isinstance(node, list) and isinstance(key, int) and node:
            node = node[min(key, len(node) - 1)]
        else:
            return out  # the place does not exist in this document
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list):
        if delete and node:
            node.pop(0)
        elif not delete:
            node.insert(0, value) if not node else node.__setitem__(0, value)
    return out


def test_valid_requests_with_one_place_changed(harness, spec):
    strategies = SchemaStrategies(spec, hints())
    places = list(strategies.locations("inference_request"))
    assert len(places) >= 12  # id, parameters, inputs[0].{name,shape,datatype,data}, outputs...

    @fuzz(150)
    @given(doc=valid_docs(), place=st.sampled_from(places), how=st.sampled_from(
        ["schema", "any", "delete"]), data=st.data())
    def run(doc, place, how, data):
        path, schema = place
        if how == "schema":
            value = data.draw(strategies.of(schema))
        elif how == "any":
            value = data.draw(json_values)
        else:
            value = None
        changed = replace_at(doc, path, value, delete=how == "delete")
        body = json.dumps(changed, allow_nan=True).encode()
        harness.send(f"mutated-{how}", "POST", "/v2/models/mlp/infer", body)

    run()


# --- byte-level damage -------------------------------------------------------------------------


@st.composite
def arrays(draw) -> np.ndarray:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(0, 9), max_size=4).map(tuple))
    if datatype == "BYTES":  # arbitrary bytes: mostly not UTF-8
        return draw(hnp.arrays(object, shape, elements=st.binary(max_size=8)))
    return draw(hnp.arrays(V2_TO_NUMPY[datatype], shape))


def test_random_shapes_datatypes_and_bytes(harness):
    @fuzz(120)
    @given(x=arrays(), name=st.sampled_from(["x", "y", "x\u00ff", ""]), binary=st.booleans(),
           model=st.sampled_from(["mlp", "lc"]))
    def run(x, name, binary, model):
        try:
            body, headers = encode_request({name: x}, binary=binary)
        except (UnicodeEncodeError, ValueError, TypeError):
            body, headers = encode_request({name: x}, binary=True)
        harness.send("random-tensor", "POST", f"/v2/models/{model}/infer", body, headers)

    run()


def test_nan_and_infinity_are_answered(harness):
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)

    @fuzz(60)
    @given(x=st.integers(1, 8).flatmap(lambda n: hnp.arrays(np.float32, (n, 4), elements=floats)),
           binary_in=st.booleans(), binary_out=st.booleans())
    def run(x, binary_in, binary_out):
        body, headers = encode_request({"x": x}, binary=binary_in,
                                       parameters={"binary_data_output": binary_out})
        r = harness.send("nan-inf", "POST", "/v2/models/mlp/infer", body, headers)
        assert r.status_code == 200, r.text

    run()


@st.composite
def encoded_valid(draw) -> tuple[bytes, dict[str, str]]:
    n = draw(st.integers(1, 8))
    x = draw(hnp.arrays(np.float32, (n, 4), elements=st.floats(-10, 10, width=32)))
    return encode_request({"x": x}, binary=draw(st.booleans()))


def test_truncated_bodies_are_refused(harness):
    @fuzz(80)
    @given(valid=encoded_valid(), data=st.data())
    def run(valid, data):
        body, headers = valid
        cut = data.draw(st.integers(0, len(body) - 1))
        r = harness.send("truncated", "POST", "/v2/models/mlp/infer", body[:cut], headers)
        assert 400 <= r.status_code < 500

    run()


def test_lying_byte_lengths(harness):
    lengths = st.integers(-5, 10**6).map(str) | st.text(max_size=6) | st.sampled_from(
        ["", " 1", "0x10", "1e3", "99999999999999999999999"])

    @fuzz(80)
    @given(n=st.integers(1, 8), header=lengths | st.none(), size=st.integers(-5, 200) | st.none())
    def run(n, header, size):
        body, headers = encode_request({"x": np.ones((n, 4), np.float32)}, binary=True)
        split = int(headers[HEADER_LENGTH])
        doc, tail = json.loads(body[:split]), body[split:]
        if size is not None:
            doc["inputs"][0]["parameters"]["binary_data_size"] = size
        head = json.dumps(doc).encode()
        headers = {HEADER_LENGTH: str(len(head)) if header is None else header}
        harness.send("byte-lengths", "POST", "/v2/models/mlp/infer", head + tail, headers)

    run()


def test_oversized_bodies_and_tensors_are_refused(harness):
    limit = LIMITS.max_body_bytes

    @fuzz(20)
    @given(size=st.integers(limit + 1, 4 * limit), chunked=st.booleans())
    def run(size, chunked):
        body = valid_body(np.zeros((1, 4), np.float32)) + b" " * (size - 60)
        assert len(body) > limit
        content = iter([body[i : i + 8192] for i in range(0, len(body), 8192)]) if chunked \
            else body
        r = harness.send("oversized-body", "POST", "/v2/models/mlp/infer", content)
        assert r.status_code == 400 and "limit" in r.json()["error"]

    @fuzz(20)
    @given(rows=st.integers(LIMITS.max_tensor_elements // 4 + 1, 2**40))
    def tensors(rows):
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [0.0]}]}
        r = harness.send("oversized-tensor", "POST", "/v2/models/mlp/infer",
                         json.dumps(doc).encode())
        assert r.status_code == 400 and "limit" in r.json()["error"]

    run()
    tensors()


def test_non_utf8_and_compressed_bodies(harness):
    bomb = gzip.compress(b"\0" * (8 * LIMITS.max_body_bytes))
    assert len(bomb) < LIMITS.max_body_bytes

    @fuzz(100)
    @given(valid=encoded_valid(), data=st.data(), how=st.sampled_from(
        ["invalid-utf8", "random-bytes", "gzip", "deflate", "bad-gzip", "bomb", "encoding"]))
    def run(valid, data, how):
        body, headers = valid
        headers = dict(headers)
        if how == "invalid-utf8":
            at = data.draw(st.integers(0, len(body)))
            bad = data.draw(st.binary(min_size=1, max_size=3).filter(_not_utf8))
            body = body[:at] + bad + body[at:]
        elif how == "random-bytes":
            body = data.draw(st.binary(max_size=256))
        elif how in ("gzip", "deflate"):
            body = gzip.compress(body) if how == "gzip" else zlib.compress(body)
            headers["content-encoding"] = how
        elif how == "bad-gzip":
            body = gzip.compress(body)[: data.draw(st.integers(0, 40))]
            headers["content-encoding"] = "gzip"
        elif how == "bomb":
            body, headers = bomb, {"content-encoding": "gzip"}
        else:
            headers["content-encoding"] = data.draw(st.text(max_size=8))
        harness.send(how, "POST", "/v2/models/mlp/infer", body, headers)

    run()


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _octets(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return raw.translate(None, b"\r\n\0")


def test_still_serving_and_nothing_outstanding(harness):
    harness.assert_serving()
    assert harness.engine.ready()
    assert harness.engine.outstanding == 0
    assert harness.sent > 0
