"""The v2 REST surface, in process: a real engine and torch models behind FastAPI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runtime.codec import Limits
from runtime.http import RepositoryAccess, install
from tests.runtime.helpers import make_engine, served_mlp

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 10


def expected(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture
def served():
    return served_mlp()


@pytest.fixture
def client(served):
    model, _ = served
    engine = make_engine([model], names=["mlp", "not-loaded"])
    engine.start()
    app = FastAPI()
    install(app, engine, Limits(max_body_bytes=1 << 20), RepositoryAccess(enabled=True))
    with TestClient(app) as c:
        c.engine = engine
        yield c
    engine.stop(1.0)


def json_body(x=X, name="x", datatype="FP32", shape=None, **extra):
    doc = {"inputs": [{"name": name, "datatype": datatype,
                       "shape": list(shape or x.shape), "data": x.ravel().tolist()}]}
    doc.update(extra)
    return json.dumps(doc)


def test_server_and_model_metadata(client):
    assert client.get("/v2").json()["name"] == "deft"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models").json() == {"models": ["mlp"]}
    meta = client.get("/v2/models/mlp").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get("/v2/models/mlp/ready").json()["ready"] is True
    assert client.get("/v2/models/mlp/versions/1").status_code == 200


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_json_infer_with_and_without_content_type(client, served, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v2/models/mlp/infer", content=json_body(id="r1"), headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "r1" and out["model_name"] == "mlp"
    y = np.array(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(y, expected(served[1], X), rtol=1e-5)


def test_binary_infer_as_tritonclient_sends_it(client, served):
    inp = httpclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=True)
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    body, header_len = httpclient.InferenceServerClient.generate_request_body([inp], [out])
    headers = {"inference-header-content-length": str(header_len)} if header_len else {}
    r = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["inference-header-content-length"]))
    np.testing.assert_allclose(result.as_numpy("y"), expected(served[1], X), rtol=1e-5)


@pytest.mark.parametrize(("body", "needle"), [
    (json_body(datatype="INT64", x=X.astype(np.int64)), "datatype"),
    (json_body(shape=[2, 2, 2]), "shape"),
    (json_body(name="z"), "z"),
    ("{not json", "JSON"),
    ('["a"]', "object"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                             "data": [1.0] * 5}]}), "x"),
    (json_body(parameters={"priority": -1}), "priority"),
    (json_body(parameters={"timeout": "soon"}), "timeout"),
])
def test_bad_input_is_a_400_with_a_v2_error(client, body, needle):
    r = client.post("/v2/models/mlp/infer", content=body)
    assert r.status_code == 400
    assert needle in r.json()["error"]
    assert client.post("/v2/models/mlp/infer", content=json_body()).status_code == 200


def test_body_over_the_limit(client):
    big = np.zeros((70000, 4), dtype=np.float32)
    r = client.post("/v2/models/mlp/infer", content=json_body(x=big))
    assert r.status_code == 400 and "limit" in r.json()["error"]


def test_batch_over_max_batch_size_is_refused(client):
    r = client.post("/v2/models/mlp/infer", content=json_body(x=np.zeros((9, 4), np.float32)))
    assert r.status_code == 400 and "max batch size" in r.json()["error"]


@pytest.mark.parametrize("length", ["\u00b2", "1\u00b3", "\u00b9", "-5", "abc", ""])
def test_a_header_length_that_is_no_ascii_count_is_a_400(client, length):
    from runtime.http import _decodes_inline

    # a server reads header bytes as latin-1: b"\xb2" arrives as "\u00b2", a digit to
    # str.isdigit, not to int() (the test client sends text as UTF-8, so it is checked here)
    assert _decodes_inline(b"{}", {"inference-header-content-length": length}) is True
    if length.isascii():
        r = client.post("/v2/models/mlp/infer", content=json_body(),
                        headers={"Inference-Header-Content-Length": length})
        assert r.status_code == 400 and "inference-header-content-length" in r.json()["error"]


def test_a_client_s_long_or_multi_line_name_comes_back_short_and_on_one_line(client):
    r = client.post(f"/v2/models/{'y' * 20000}/infer", content=json_body())
    assert r.status_code == 404 and len(r.json()["error"]) < 1100
    assert r.json()["error"].endswith(" characters)")
    r = client.post("/v2/models/mlp/infer", content=json_body(name="x\nERROR forged\x00"))
    assert r.status_code == 400
    assert "x\\nERROR forged\\x00" in r.json()["error"] and "\n" not in r.json()["error"]


def test_unknown_model_and_unknown_route(client):
    r = client.post("/v2/models/nope/infer", content=json_body())
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert client.get("/v2/models/nope").status_code == 404
    r = client.get("/v2/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v2/models/not-loaded")
    assert r.status_code == 503 and "not loaded" in r.json()["error"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/models/mlp:predict"), ("POST", "/v1/models/mlp:explain"),
    ("GET", "/v1/models/mlp"), ("GET", "/v1/models"),
])
def test_the_v1_protocol_is_refused_with_a_v2_error(client, method, path):
    r = client.request(method, path, content=json.dumps({"instances": [[1, 2, 3, 4]]}))
    assert r.status_code == 404 and "v2 inference protocol" in r.json()["error"]
    assert client.post("/v2/models/mlp/infer", content=json_body()).status_code == 200


def test_repository_index_unload_and_load(client):
    index = client.post("/v2/repository/index").json()
    assert {m["name"]: m["state"] for m in index} == {"mlp": "READY", "not-loaded": "UNAVAILABLE"}
    assert client.post("/v2/repository/models/mlp/unload").status_code == 200
    r = client.post("/v2/models/mlp/infer", content=json_body())
    assert r.status_code == 503
    assert client.post("/v2/repository/models/mlp/load").status_code == 200
    assert client.post("/v2/models/mlp/infer", content=json_body()).status_code == 200
    assert client.post("/v2/repository/models/ghost/load").status_code == 404


def test_a_version_in_the_path_must_be_the_served_one(client):
    assert client.post("/v2/models/mlp/versions/1/infer", content=json_body()).status_code == 200
    assert client.get("/v2/models/mlp/versions/1/ready").json()["ready"] is True
    for path, method in [("/v2/models/mlp/versions/2/infer", "POST"),
                         ("/v2/models/mlp/versions/abc", "GET"),
                         ("/v2/models/mlp/versions/2/ready", "GET")]:
        r = client.request(method, path, content=json_body())
        assert r.status_code == 404, (path, r.text)
        assert "version" in r.json()["error"]


def test_repository_requests_take_an_empty_body_or_a_json_object(client):
    assert [m["name"] for m in client.post("/v2/repository/index").json()] == [
        "mlp", "not-loaded"]
    ready = client.post("/v2/repository/index", content=json.dumps({"ready": True}))
    assert [m["name"] for m in ready.json()] == ["mlp"]
    for path in ("/v2/repository/index", "/v2/repository/models/mlp/load",
                 "/v2/repository/models/mlp/unload"):
        for body in ("{x", "[]", "7"):
            r = client.post(path, content=body)
            assert r.status_code == 400 and "error" in r.json(), (path, body, r.text)
    r = client.post("/v2/repository/index", content=json.dumps({"ready": "yes"}))
    assert r.status_code == 400 and "boolean" in r.json()["error"]
    assert client.post("/v2/repository/models/mlp/load", content="{}").status_code == 200


def test_repository_load_and_unload_parameters(client):
    load, unload = "/v2/repository/models/mlp/load", "/v2/repository/models/mlp/unload"
    for path in (load, unload):
        r = client.post(path, content=json.dumps({"parameters": 5}))
        assert r.status_code == 400 and "'parameters' must be an object" in r.json()["error"]
    # what tritonclient sends with a configuration or files of its own: not loaded without
    for params in ({"config": "{}"}, {"file:1/model.pt2": "AAAA"}):
        r = client.post(load, content=json.dumps({"parameters": params}))
        assert r.status_code == 400 and "not supported" in r.json()["error"], r.text
    # what tritonclient's unload sends, and a load with nothing of its own
    body = json.dumps({"parameters": {"unload_dependents": False}})
    assert client.post(unload, content=body).status_code == 200
    assert client.post(load, content=json.dumps({"parameters": {}})).status_code == 200


def test_repository_api_disabled_or_behind_a_token(served):
    model, _ = served
    engine = make_engine([model])
    for access, headers, status in [
        (RepositoryAccess(enabled=False), {}, 403),
        (RepositoryAccess(token="s3cret"), {}, 401),
        (RepositoryAccess(token="s3cret"), {"authorization": "Bearer wrong"}, 401),
        (RepositoryAccess(token="s3cret"), {"authorization": "Bearer s3cret"}, 200),
    ]:
        app = FastAPI()
        install(app, engine, Limits(), access)
        with TestClient(app) as c:
            r = c.post("/v2/repository/index", headers=headers)
            assert r.status_code == status
            if status != 200:
                assert "error" in r.json()


def _binary_request(x):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    body, header_len = httpclient.InferenceServerClient.generate_request_body([inp], [out])
    return body, {"inference-header-content-length": str(header_len)}


@pytest.mark.parametrize("inline", [True, False])
def test_small_requests_decode_on_the_loop_and_others_in_a_worker_with_the_same_answers(
        client, served, monkeypatch, inline):
    from runtime import http

    if not inline:  # every body over the limits: read into one buffer, decoded in a worker
        monkeypatch.setattr(http, "INLINE_DECODE_BYTES", 0)
        monkeypatch.setattr(http, "INLINE_JSON_BYTES", 0)
    body, headers = _binary_request(X)
    assert http._decodes_inline(body, {k.lower(): v for k, v in headers.items()}) is inline
    r = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["inference-header-content-length"]))
    np.testing.assert_allclose(result.as_numpy("y"), expected(served[1], X), rtol=1e-5)
    r = client.post("/v2/models/mlp/infer", content=json_body(id="j"))
    assert r.status_code == 200 and r.json()["id"] == "j"
    r = client.post("/v2/models/mlp/infer", content=json_body(shape=[2, 2, 2]))
    assert r.status_code == 400 and "shape" in r.json()["error"]
    r = client.post("/v2/models/mlp/infer", content=body[:-3], headers=headers)
    assert r.status_code == 400 and "error" in r.json()


def test_which_bodies_decode_inline():
    from runtime.http import INLINE_DECODE_BYTES, INLINE_JSON_BYTES, _decodes_inline

    binary = {"inference-header-content-length": "100"}
    assert _decodes_inline(b"x" * 1000, binary)
    assert not _decodes_inline(b"x" * (INLINE_DECODE_BYTES + 1), binary)
    assert not _decodes_inline(b"x" * 1000, {**binary, "content-encoding": "gzip"})
    big_header = {"inference-header-content-length": str(INLINE_JSON_BYTES + 1)}
    assert not _decodes_inline(b"x" * (INLINE_JSON_BYTES + 10), big_header)
    assert _decodes_inline(b"{}", {})
    assert not _decodes_inline(b"x" * (INLINE_JSON_BYTES + 1), {})


class _StreamingRequest:
    """What ``_read_body`` uses of a Starlette request: its headers and its body as chunks,
    then (``stall``) nothing more, ever."""

    def __init__(self, chunks, length=None, stall=False):
        self.chunks = chunks
        self.headers = {} if length is None else {"content-length": str(length)}
        self.stall = stall

    async def stream(self):
        import asyncio

        for chunk in self.chunks:
            yield chunk
        if self.stall:
            await asyncio.Event().wait()


def test_a_large_declared_body_is_kept_as_chunks_and_joined_off_the_loop():
    import asyncio

    from runtime.errors import InvalidInput
    from runtime.http import INLINE_DECODE_BYTES, BodyChunks, _read_body

    chunks = [bytes([i]) * (INLINE_DECODE_BYTES // 2 + i) for i in range(5)]
    total = sum(map(len, chunks))

    def read(length):
        return asyncio.run(_read_body(_StreamingRequest(chunks, length), 1 << 30))

    body = read(total)
    # on the loop the chunks are only kept (the very objects read), nothing is copied
    assert isinstance(body, BodyChunks) and len(body) == total
    assert all(a is b for a, b in zip(body._chunks, chunks, strict=True))
    joined = body.join()
    assert joined.dtype == np.uint8 and joined.tobytes() == b"".join(chunks)
    assert not body._chunks  # each chunk let go once copied
    assert bytes(read(total)) == b"".join(chunks)
    assert body.join() is joined  # joined once; a second call gives the same array
    with pytest.raises(InvalidInput, match="longer"):
        read(total - 1)
    with pytest.raises(InvalidInput, match="shorter"):
        read(total + 1)
    assert read(None) == b"".join(chunks)  # no declared length: joined at the end


def test_a_body_sent_a_few_bytes_at_a_time_is_gathered_into_larger_pieces():
    import asyncio

    from runtime.http import SMALL_CHUNK_BYTES, _read_into

    big = b"B" * (2 * SMALL_CHUNK_BYTES)
    chunks = [b"a"] * (SMALL_CHUNK_BYTES + 10) + [big, b"z" * 3]
    total = sum(map(len, chunks))
    body = asyncio.run(_read_into(_StreamingRequest(chunks, total), total, lambda: None))
    # thousands of one-byte chunks become two pieces, not thousands of objects
    assert len(body._chunks) <= 4
    assert body.join().tobytes() == b"".join(chunks)


@pytest.mark.parametrize("length", [None, 60 * 1024 * 1024])
def test_a_body_that_stalls_is_answered_408(length):
    import asyncio

    from runtime.errors import RequestTimeout
    from runtime.http import _read_body

    stalled = _StreamingRequest([b"x" * 70_000], length, stall=True)
    with pytest.raises(RequestTimeout, match="stalled"):
        asyncio.run(_read_body(stalled, 64 * 1024 * 1024, idle_s=0.01))



def test_a_latency_critical_request_over_http_reports_its_server_time():
    from scheduler.clock import FakeClock
    from scheduler.priority import Priority

    clock = FakeClock()
    model, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    engine = make_engine([model], clock=clock)
    engine.start()
    app = FastAPI()
    install(app, engine, Limits(max_body_bytes=1 << 20), RepositoryAccess(enabled=True))
    try:
        with TestClient(app) as c:
            r = c.post("/v2/models/lc/infer", content=json_body())
            assert r.status_code == 200, r.text
    finally:
        engine.stop(1.0)
    # the handler's receipt time reached the engine (a frozen clock: no time outside)
    assert list(engine.scheduler.streams._streams["lc"].host_samples) == [0.0]


def test_infer_target_matches_the_infer_routes_only():
    from runtime.http import infer_target

    assert infer_target("/v2/models/mlp/infer") == ("mlp", None)
    assert infer_target("/v2/models/mlp/versions/3/infer") == ("mlp", "3")
    for path in ("/v2/models//infer", "/v2/models/mlp/infer/", "/v2/models/a/b/infer",
                 "/v2/models/mlp/versions//infer", "/v2/models/mlp/ready", "/v2/models/infer",
                 "/v2/models/mlp/v/3/infer", "/v1/models/mlp/infer"):
        assert infer_target(path) is None, path


def test_infer_requests_go_around_the_middleware_stack(served):
    """A middleware of the app (as kserve adds its timing middleware) sees every request but
    the infer ones, which are answered the same with and without it."""
    model, module = served
    engine = make_engine([model], names=["mlp"])
    engine.start()
    app = FastAPI()
    install(app, engine, Limits(max_body_bytes=1 << 20), RepositoryAccess(enabled=True))
    seen = []

    @app.middleware("http")
    async def record(request, call_next):
        seen.append((request.method, request.url.path))
        return await call_next(request)

    try:
        with TestClient(app) as c:
            ok = c.post("/v2/models/mlp/versions/1/infer", content=json_body())
            assert ok.status_code == 200, ok.text
            y = np.array(ok.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 3)
            np.testing.assert_allclose(y, expected(module, X), rtol=1e-5)
            assert c.post("/v2/models/nope/infer", content=json_body()).status_code == 404
            bad = c.post("/v2/models/mlp/infer", content=b"{not json")
            assert bad.status_code == 400 and "error" in bad.json()
            # not infer routes: through the stack (a wrong method too, as FastAPI answers it)
            assert c.get("/v2/models/mlp/infer").status_code == 405
            slash = c.post("/v2/models/mlp/infer/", content=json_body(), follow_redirects=False)
            assert slash.status_code == 404  # not a route: no redirect to the client's host
            assert slash.json() == {"error": "no route POST /v2/models/mlp/infer/"}
            assert c.get("/v2/health/ready").status_code == 200
    finally:
        engine.stop(1.0)
    assert ("POST", "/v2/models/mlp/versions/1/infer") not in seen
    assert ("POST", "/v2/models/nope/infer") not in seen
    assert ("GET", "/v2/models/mlp/infer") in seen and ("GET", "/v2/health/ready") in seen
    assert ("POST", "/v2/models/mlp/infer/") in seen


def test_an_unexpected_error_in_infer_is_a_v2_500(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(client.engine, "check_room", broken)
    r = client.post("/v2/models/mlp/infer", content=json_body())
    assert r.status_code == 500 and r.json() == {"error": "RuntimeError: boom"}
    assert client.post("/v2/models/mlp/infer", content=json_body()).status_code == 500
    monkeypatch.undo()
    assert client.post("/v2/models/mlp/infer", content=json_body()).status_code == 200


def test_infer_requests_time_their_stages_in_kservers_histograms(served):
    # histograms shaped as KServe's request_*_seconds, in a registry of the test's own
    from prometheus_client import CollectorRegistry, Histogram

    from runtime.http import StageHistograms

    registry = CollectorRegistry()
    stages = StageHistograms(*(
        Histogram(f"request_{name}_seconds", name, ["model_name"], registry=registry)
        for name in ("preprocess", "predict", "postprocess")))
    model, _ = served
    engine = make_engine([model])
    engine.start()
    app = FastAPI()
    install(app, engine, Limits(), RepositoryAccess(), stages)
    with TestClient(app) as c:
        for _ in range(3):
            assert c.post("/v2/models/mlp/infer", content=json_body()).status_code == 200
        assert c.post("/v2/models/mlp/infer", content="{").status_code == 400  # not counted
    engine.stop(1.0)
    for name in ("preprocess", "predict", "postprocess"):
        count = registry.get_sample_value(f"request_{name}_seconds_count", {"model_name": "mlp"})
        total = registry.get_sample_value(f"request_{name}_seconds_sum", {"model_name": "mlp"})
        assert count == 3 and total > 0
