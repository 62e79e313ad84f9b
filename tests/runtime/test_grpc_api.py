"""The v2 gRPC surface, in process: Deft's servicer on a loopback grpc.aio server with kserve's
interceptors, a real engine and a small real torch model behind it, called with kserve's own
stub. What REST answers, gRPC answers: the same checks and words, gRPC's codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runtime.codec import Limits
from runtime.engine import Engine
from runtime.http import EXTENSIONS, SERVER_NAME, SERVER_VERSION, RepositoryAccess, install
from scheduler.priority import Priority
from tests.runtime.helpers import kserve_argv, make_engine, served_mlp

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 10


@dataclass
class Kserve:
    pb: Any
    pb_grpc: Any
    grpc_api: Any
    DataPlane: Any
    ModelRepositoryExtension: Any


@pytest.fixture(scope="module")
def kg():
    """kserve's gRPC pieces and Deft's servicer (kserve parses sys.argv when it is imported:
    import it with a command line of its own)."""
    with kserve_argv():
        from kserve.protocol.dataplane import DataPlane
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
        from kserve.protocol.model_repository_extension import ModelRepositoryExtension

        import runtime.grpc_api as grpc_api
    return Kserve(pb, pb_grpc, grpc_api, DataPlane, ModelRepositoryExtension)


@dataclass
class Runtime:
    engine: Engine
    registry: Any
    stub: Any
    pb: Any
    channel: Any = None
    index_response: Any = None


@contextlib.asynccontextmanager
async def grpc_runtime(kg: Kserve, access: RepositoryAccess | None = None,
                       max_message_bytes: int | None = 64 << 20,
                       priority: Priority = Priority.BATCH) -> AsyncIterator[Runtime]:
    """The engine, kserve's registry kept in step with it and the gRPC server, wired as
    ``runtime.serve`` wires them (the gRPC server on a loopback port of its own)."""
    model, _ = served_mlp(priority=priority,
                          slo_ms=1000 if priority == Priority.LATENCY_CRITICAL else None)
    engine = make_engine([model], names=["mlp", "not-loaded"])
    engine.start()
    registry = kg.grpc_api.model_registry(engine)
    servicer = kg.grpc_api.DeftServicer(
        kg.DataPlane(model_registry=registry), kg.ModelRepositoryExtension(registry), engine,
        access or RepositoryAccess())
    server = kg.grpc_api.make_server(servicer, 2, max_message_bytes)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]
        ) as channel:
            yield Runtime(engine, registry, kg.pb_grpc.GRPCInferenceServiceStub(channel), kg.pb,
                          channel, kg.grpc_api.RepositoryIndexResponse)
    finally:
        await server.stop(0)
        engine.stop(1.0)


def run(kg: Kserve, scenario: Callable[[Runtime], Any], **options: Any) -> None:
    """Run ``async def scenario(runtime)`` against a fresh in-process gRPC runtime."""

    async def main() -> None:
        async with grpc_runtime(kg, **options) as rt:
            await scenario(rt)

    asyncio.run(main())


async def expect(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value.details() or ""


def infer_request(pb: Any, name: str = "mlp", version: str = "",
                  parameters: dict[str, Any] | None = None) -> Any:
    request = pb.ModelInferRequest(model_name=name, model_version=version)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(value)
    return request


@contextlib.contextmanager
def rest_client(access: RepositoryAccess | None = None) -> Iterator[tuple[TestClient, Engine]]:
    """The REST routes on the same model, to compare answers with."""
    model, _ = served_mlp()
    engine = make_engine([model], names=["mlp", "not-loaded"])
    engine.start()
    app = FastAPI()
    install(app, engine, Limits(max_body_bytes=1 << 20), access or RepositoryAccess())
    try:
        with TestClient(app) as client:
            yield client, engine
    finally:
        engine.stop(1.0)


def test_server_metadata_is_the_one_rest_gives(kg):
    with rest_client() as (client, _):
        rest = client.get("/v2").json()
    assert rest == {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    async def scenario(rt):
        meta = await rt.stub.ServerMetadata(rt.pb.ServerMetadataRequest())
        assert (meta.name, meta.version, list(meta.extensions)) == (
            rest["name"], rest["version"], rest["extensions"])
        assert (await rt.stub.ServerReady(rt.pb.ServerReadyRequest())).ready

    run(kg, scenario)


def test_repository_unload_and_load_go_through_the_engine(kg):
    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        reply = await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"))
        assert (reply.model_name, reply.isUnloaded) == ("mlp", True)
        assert not rt.engine.model_ready("mlp")
        # known but not loaded: not ready, and unavailable with REST's words
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="mlp"))).ready
        for call in (stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp")),
                     stub.ModelInfer(infer_request(pb))):
            assert await expect(call, grpc.StatusCode.UNAVAILABLE) == (
                "model 'mlp' is unavailable")

        reply = await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
        assert (reply.model_name, reply.isLoaded) == ("mlp", True)
        assert rt.engine.model_ready("mlp")
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="mlp"))).ready
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"))
        assert (meta.name, list(meta.versions), meta.inputs[0].name) == ("mlp", ["1"], "x")
        out = await stub.ModelInfer(infer_request(pb))
        assert out.model_name == "mlp" and list(out.outputs[0].shape) == [2, 3]

    run(kg, scenario)


def test_rest_and_grpc_on_one_engine_never_disagree(kg):
    """Unloaded or loaded through either API, both answer alike, with the same words."""
    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        app = FastAPI()
        install(app, rt.engine, Limits(max_body_bytes=1 << 20), RepositoryAccess())
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                            "data": X.ravel().tolist()}]}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deft") as rest:
            assert (await rest.post("/v2/repository/models/mlp/unload")).status_code == 200
            assert "mlp" not in rt.registry.models
            r = await rest.post("/v2/models/mlp/infer", json=body)
            assert r.status_code == 503
            assert await expect(stub.ModelInfer(infer_request(pb)),
                                grpc.StatusCode.UNAVAILABLE) == r.json()["error"]
            assert (await rest.get("/v2/models/mlp/ready")).json()["ready"] is False
            assert not (await stub.ModelReady(pb.ModelReadyRequest(name="mlp"))).ready

            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
            assert "mlp" in rt.registry.models
            assert (await rest.post("/v2/models/mlp/infer", json=body)).status_code == 200
            assert (await stub.ModelInfer(infer_request(pb))).model_name == "mlp"

            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"))
            r = await rest.post("/v2/models/mlp/infer", json=body)
            assert r.status_code == 503
            assert await expect(stub.ModelInfer(infer_request(pb)),
                                grpc.StatusCode.UNAVAILABLE) == r.json()["error"]

    run(kg, scenario)


def test_repository_calls_for_an_unknown_model_are_not_found_with_rests_words(kg):
    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        for call in (stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost")),
                     stub.RepositoryModelUnload(
                         pb.RepositoryModelUnloadRequest(model_name="ghost"))):
            assert await expect(call, grpc.StatusCode.NOT_FOUND) == "model 'ghost' is not found"
        assert rt.engine.model_ready("mlp")

    run(kg, scenario)


def test_triton_repository_requests_name_the_model_in_field_2(kg):
    """tritonclient.grpc speaks Triton's proto: ``repository_name`` is field 1 and
    ``model_name`` field 2 (bytes as it writes them); an empty name is refused as such."""
    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        unload = pb.RepositoryModelUnloadRequest.FromString(b"\x12\x03mlp")
        assert unload.model_name == ""  # what kserve's own servicer took for the name
        assert (await stub.RepositoryModelUnload(unload)).model_name == "mlp"
        assert not rt.engine.model_ready("mlp")
        load = pb.RepositoryModelLoadRequest.FromString(b"\x0a\x04repo\x12\x03mlp")
        assert (await stub.RepositoryModelLoad(load)).model_name == "mlp"
        assert rt.engine.model_ready("mlp")
        for call in (stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest()),
                     stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest())):
            assert await expect(call, grpc.StatusCode.INVALID_ARGUMENT) == "model name is empty"

    run(kg, scenario)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _triton_load(name: str, **parameters: tuple[int, bytes]) -> bytes:
    """Triton's RepositoryModelLoadRequest as tritonclient.grpc writes it: the model's name in
    field 2 and the parameters map in field 3, each entry a key (1) and a
    ModelRepositoryParameter (2) holding ``(field, bytes)``: 3 string_param, 4 bytes_param."""
    out = _field(2, name.encode())
    for key, (choice, value) in parameters.items():
        out += _field(3, _field(1, key.encode()) + _field(2, _field(choice, value)))
    return out


def test_a_triton_load_bringing_a_configuration_or_files_is_refused_as_over_rest(kg):
    with rest_client() as (client, _):
        r = client.post("/v2/repository/models/mlp/load",
                        content=json.dumps({"parameters": {"config": "{}"}}))
        assert r.status_code == 400
        words = r.json()["error"]

    async def scenario(rt):
        pb, stub = rt.pb, rt.stub

        def load(raw):
            return stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest.FromString(raw))

        assert await expect(load(_triton_load("mlp", config=(3, b"{}"))),
                            grpc.StatusCode.INVALID_ARGUMENT) == words
        raw = _triton_load("mlp", **{"file:1/model.pt2": (4, b"x" * 300)})
        details = await expect(load(raw), grpc.StatusCode.INVALID_ARGUMENT)
        assert "['file:1/model.pt2'] are not supported" in details
        assert (await load(_triton_load("mlp"))).isLoaded and rt.engine.model_ready("mlp")

    run(kg, scenario)


def repository_index(rt: Runtime) -> Any:
    """Triton's RepositoryIndex on the runtime's channel (KServe's stub has no such method)."""
    return rt.channel.unary_unary(
        "/inference.GRPCInferenceService/RepositoryIndex",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=rt.index_response.FromString)


def test_the_repository_index_is_tritons_rpc_with_rests_answer(kg):
    with rest_client() as (client, _):
        rest_all = client.post("/v2/repository/index").json()
        rest_ready = client.post("/v2/repository/index", json={"ready": True}).json()

    async def scenario(rt):
        index = repository_index(rt)
        req = kg.grpc_api.RepositoryIndexRequest
        every = await index(req())
        ready = await index(req(ready=True))
        as_dicts = lambda r: [  # noqa: E731
            {k: v for k, v in (("name", m.name), ("version", m.version), ("state", m.state),
                               ("reason", m.reason)) if v} for m in r.models]
        assert as_dicts(every) == rest_all and as_dicts(ready) == rest_ready
        assert [m.name for m in every.models] == ["mlp", "not-loaded"]
        assert [m.name for m in ready.models] == ["mlp"]

    run(kg, scenario)


REFUSALS = [
    (RepositoryAccess(enabled=False), None, 403, grpc.StatusCode.PERMISSION_DENIED),
    (RepositoryAccess(token="s3cret"), None, 401, grpc.StatusCode.UNAUTHENTICATED),
    (RepositoryAccess(token="s3cret"), "Bearer wrong", 401, grpc.StatusCode.UNAUTHENTICATED),
    (RepositoryAccess(token="s3cret"), "s3cret", 401, grpc.StatusCode.UNAUTHENTICATED),
]


@pytest.mark.parametrize(("access", "authorization", "status", "code"), REFUSALS)
def test_repository_refusals_are_rests_over_grpc(kg, access, authorization, status, code):
    headers = {"authorization": authorization} if authorization else {}
    with rest_client(access) as (client, _):
        r = client.post("/v2/repository/models/mlp/unload", headers=headers)
    assert r.status_code == status
    words = r.json()["error"]
    metadata = (("authorization", authorization),) if authorization else None

    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        for call in (
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"),
                                       metadata=metadata),
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost"),
                                     metadata=metadata),
            repository_index(rt)(kg.grpc_api.RepositoryIndexRequest(), metadata=metadata),
        ):
            assert await expect(call, code) == words
        assert rt.engine.model_ready("mlp") and "mlp" in rt.registry.models

    run(kg, scenario, access=access)


@pytest.mark.parametrize("authorization", ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"])
def test_the_bearer_scheme_is_matched_case_insensitively(kg, authorization):
    access = RepositoryAccess(token="s3cret")
    with rest_client(access) as (client, engine):
        r = client.post("/v2/repository/models/mlp/unload",
                        headers={"authorization": authorization})
        assert r.status_code == 200, r.text
        assert not engine.model_ready("mlp")

    async def scenario(rt):
        reply = await rt.stub.RepositoryModelUnload(
            rt.pb.RepositoryModelUnloadRequest(model_name="mlp"),
            metadata=(("authorization", authorization),))
        assert reply.isUnloaded and not rt.engine.model_ready("mlp")

    run(kg, scenario, access=access)


def test_an_unknown_model_or_version_is_not_found_with_rests_words(kg):
    with rest_client() as (client, _):
        words = {path: client.get(path).json()["error"]
                 for path in ("/v2/models/mlp/versions/7", "/v2/models/mlp/versions/7/ready",
                              "/v2/models/nope", "/v2/models/nope/ready")}
    assert len(set(words.values())) == 2

    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        for name, version, path in [("mlp", "7", "/v2/models/mlp/versions/7"),
                                    ("nope", "", "/v2/models/nope")]:
            for call in (stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version)),
                         stub.ModelReady(pb.ModelReadyRequest(name=name, version=version)),
                         stub.ModelInfer(infer_request(pb, name, version))):
                assert await expect(call, grpc.StatusCode.NOT_FOUND) == words[path]
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="1"))).ready
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version="1"))
        assert list(meta.versions) == ["1"]
        answer = await stub.ModelInfer(infer_request(pb, version="1"))
        assert (answer.model_name, answer.model_version) == ("mlp", "1")  # as REST answers
        # raw contents, without REST's binary_data_size parameter
        assert len(answer.raw_output_contents) == 1
        assert all("binary_data_size" not in o.parameters for o in answer.outputs)

    run(kg, scenario)


@pytest.mark.parametrize("limit_mb,code", [(64, grpc.StatusCode.OK),
                                            (4, grpc.StatusCode.RESOURCE_EXHAUSTED)])
def test_a_request_message_may_be_as_large_as_the_runtime_s_body_limit(kg, limit_mb, code):
    async def scenario(rt):
        pb = rt.pb
        request = infer_request(pb)  # about 9 MiB, past gRPC's and KServe's own defaults
        request.parameters["padding"].CopyFrom(pb.InferParameter(string_param="x" * (9 << 20)))
        call = rt.stub.ModelInfer(request)
        if code == grpc.StatusCode.OK:
            assert (await call).model_name == "mlp"
        else:
            assert "larger than max" in await expect(call, code)

    run(kg, scenario, max_message_bytes=limit_mb << 20)


def test_a_latency_critical_grpc_infer_reports_its_time_in_the_server(kg):
    async def scenario(rt):
        for _ in range(3):
            assert (await rt.stub.ModelInfer(infer_request(rt.pb))).model_name == "mlp"
        samples = list(rt.engine.scheduler.streams._streams["mlp"].host_samples)
        assert len(samples) == 3 and all(0.0 <= x < 5.0 for x in samples)

    run(kg, scenario, priority=Priority.LATENCY_CRITICAL)


def test_a_large_grpc_infer_is_converted_and_checked_off_the_event_loop(kg, monkeypatch):
    import threading

    import runtime.kserve_model as km

    where: dict[str, str] = {}
    from_grpc = kg.grpc_api.InferRequest.from_grpc
    checked = km._checked_inputs

    def recording_from_grpc(request):
        where["from_grpc"] = threading.current_thread().name
        return from_grpc(request)

    def recording_checked(payload, specs):
        where["checked"] = threading.current_thread().name
        return checked(payload, specs)

    monkeypatch.setattr(kg.grpc_api.InferRequest, "from_grpc", recording_from_grpc)
    monkeypatch.setattr(km, "_checked_inputs", recording_checked)

    async def scenario(rt):
        loop_thread = threading.current_thread().name
        small = infer_request(rt.pb)
        assert (await rt.stub.ModelInfer(small)).model_name == "mlp"
        assert where == {"from_grpc": loop_thread, "checked": loop_thread}
        big = infer_request(rt.pb)  # 1 MiB of message, past the inline bound
        big.parameters["padding"].CopyFrom(rt.pb.InferParameter(string_param="x" * (1 << 20)))
        assert big.ByteSize() > kg.grpc_api.INLINE_MESSAGE_BYTES
        monkeypatch.setattr(km, "INLINE_INPUT_ELEMENTS", X.size - 1)  # and of elements
        assert (await rt.stub.ModelInfer(big)).model_name == "mlp"
        assert loop_thread not in (where["from_grpc"], where["checked"])

    run(kg, scenario)


def test_typed_contents_that_cannot_fit_the_model_are_refused_before_their_conversion(
        kg, monkeypatch):
    converted: list[Any] = []
    from_grpc = kg.grpc_api.InferRequest.from_grpc
    monkeypatch.setattr(kg.grpc_api.InferRequest, "from_grpc",
                        lambda request: converted.append(request) or from_grpc(request))

    async def scenario(rt):
        pb = rt.pb
        extra = infer_request(pb)  # shape [2, 4], with a million values
        extra.inputs[0].contents.fp32_contents.extend([0.0] * 1_000_000)
        assert await expect(rt.stub.ModelInfer(extra), grpc.StatusCode.INVALID_ARGUMENT) == \
            "input 'x': its data is not 8 FP32 values for shape [2, 4]"
        rows = pb.ModelInferRequest(model_name="mlp")  # the values fit a batch it never takes
        rows.inputs.add(name="x", datatype="FP32", shape=[9, 4]).contents.fp32_contents.extend(
            [0.0] * 36)
        assert await expect(rt.stub.ModelInfer(rows), grpc.StatusCode.INVALID_ARGUMENT) == \
            "batch of 9 exceeds model 'mlp''s max batch size of 8"
        assert converted == []
        assert (await rt.stub.ModelInfer(infer_request(pb))).model_name == "mlp"
        assert len(converted) == 1

    run(kg, scenario)


def test_bytes_that_are_no_message_are_invalid_argument_in_one_log_line(kg, caplog):
    import logging

    async def scenario(rt):
        for method in ("ModelInfer", "ModelReady", "RepositoryModelLoad", "RepositoryIndex"):
            call = rt.channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                          request_serializer=lambda x: x,
                                          response_deserializer=lambda x: x)
            for junk in (b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe"):
                details = await expect(call(junk), grpc.StatusCode.INVALID_ARGUMENT)
                assert details.startswith("the request is not a valid message")
        assert (await rt.stub.ModelInfer(infer_request(rt.pb))).model_name == "mlp"

    with caplog.at_level(logging.INFO):
        run(kg, scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if "not a valid message" in r.getMessage()]
    assert len(lines) == 8 and all(r.levelno == logging.INFO and not r.exc_info for r in lines)


def test_a_client_s_long_or_multi_line_name_comes_back_short_and_on_one_line(kg, caplog):
    import logging

    async def scenario(rt):
        for name in ("y" * 20000, "x\n2026-01-01 00:00:00,000 ERROR runtime: forged\x00"):
            details = await expect(rt.stub.ModelInfer(infer_request(rt.pb, name=name)),
                                   grpc.StatusCode.NOT_FOUND)
            assert len(details) < 1100 and "\n" not in details and "\x00" not in details
        details = await expect(rt.stub.ModelReady(rt.pb.ModelReadyRequest(
            name="mlp", version="v" * 20000)), grpc.StatusCode.NOT_FOUND)
        assert len(details) < 1100 and details.endswith(" characters)")

    with caplog.at_level(logging.INFO):
        run(kg, scenario)
    assert not [r for r in caplog.records if "\n" in r.getMessage()]


def test_a_full_queue_is_resource_exhausted_with_rest_s_retry_after_as_pushback(kg):
    from runtime import errors

    with rest_client() as (client, engine):
        async def full(*args, **kwargs):
            raise errors.QueueFull("model 'mlp' has 16 requests queued", retry_after_s=2.5)

        engine.infer = full
        r = client.post("/v2/models/mlp/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "2"

    async def scenario(rt):
        async def full(*args, **kwargs):
            raise errors.QueueFull("model 'mlp' has 16 requests queued", retry_after_s=2.5)

        rt.engine.infer = full
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rt.stub.ModelInfer(infer_request(rt.pb))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == r.json()["error"]
        assert ("grpc-retry-pushback-ms", "2500") in tuple(info.value.trailing_metadata())

    run(kg, scenario)


def _uint64(value: int) -> bytes:
    """An InferParameter with Triton's ``uint64_param`` (field 5, varint), as bytes."""
    return b"\x28" + _varint(value)


@pytest.mark.parametrize("kind", ["int64", "uint64", "double"])
@pytest.mark.parametrize("where", ["input", "output"])
def test_an_unsupported_extension_is_refused_whatever_kind_its_value_is(kg, kind, where):
    async def scenario(rt):
        pb = rt.pb
        value = {"int64": pb.InferParameter(int64_param=1),
                 "uint64": pb.InferParameter.FromString(_uint64(1)),
                 "double": pb.InferParameter.FromString(b"\x21" + np.float64(1).tobytes())}[kind]
        request = infer_request(pb)
        target = request.inputs[0] if where == "input" else request.outputs.add(name="y")
        target.parameters["classification"].CopyFrom(value)
        words = await expect(rt.stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT)
        name = "x" if where == "input" else "y"
        assert words == f"{where} '{name}': parameter 'classification' is not supported"

    run(kg, scenario)


def _bad_parameters(pb):
    param = pb.InferParameter
    double = param.FromString(b"\x21" + np.float64(5.0).tobytes())  # Triton's double_param
    return [
        ("priority", param(int64_param=-1), "must be a non-negative integer"),
        ("timeout", param(int64_param=-5), "must be a non-negative integer"),
        ("priority", param(bool_param=True), "must be a non-negative integer"),
        ("timeout", param(string_param="5"), "must be a non-negative integer"),
        ("timeout", double, "must be a non-negative integer"),
        ("timeout", param.FromString(_uint64(1 << 63)), "at most 2**63-1"),
        ("priority", param.FromString(_uint64((1 << 64) - 1)), "at most 2**63-1"),
    ]


def test_bad_priority_and_timeout_parameters_are_invalid_with_rests_words(kg):
    with rest_client() as (client, _):
        rest = {}
        for key, value in [("priority", -1), ("timeout", -5), ("timeout", 1 << 63)]:
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                "data": X.ravel().tolist()}], "parameters": {key: value}}
            r = client.post("/v2/models/mlp/infer", content=json.dumps(body))
            assert r.status_code == 400, r.text
            rest[key, value] = r.json()["error"]
    assert rest["priority", -1] == (
        "request parameter 'priority' must be a non-negative integer of at most 2**63-1")
    assert rest["timeout", 1 << 63] == (
        "request parameter 'timeout' must be a non-negative integer of at most 2**63-1")

    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        for key, value, needle in _bad_parameters(pb):
            details = await expect(stub.ModelInfer(infer_request(pb, parameters={key: value})),
                                   grpc.StatusCode.INVALID_ARGUMENT)
            assert details.startswith(f"request parameter '{key}' ") and needle in details
        assert await expect(
            stub.ModelInfer(infer_request(pb, parameters={"priority": pb.InferParameter(
                int64_param=-1)})), grpc.StatusCode.INVALID_ARGUMENT) == rest["priority", -1]
        assert await expect(
            stub.ModelInfer(infer_request(pb, parameters={"timeout": pb.InferParameter.FromString(
                _uint64(1 << 63))})), grpc.StatusCode.INVALID_ARGUMENT) == rest["timeout", 1 << 63]
        good = {"priority": pb.InferParameter(int64_param=2),
                "timeout": pb.InferParameter.FromString(_uint64((1 << 63) - 1))}
        assert (await stub.ModelInfer(infer_request(pb, parameters=good))).model_name == "mlp"

    run(kg, scenario)


def test_rest_refuses_a_priority_or_timeout_past_2_63_as_grpc_does():
    with rest_client() as (client, _):
        for key in ("priority", "timeout"):
            for value, status in [((1 << 63) - 1, 200), (1 << 63, 400), ((1 << 64) - 1, 400)]:
                body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                    "data": X.ravel().tolist()}], "parameters": {key: value}}
                r = client.post("/v2/models/mlp/infer", content=json.dumps(body))
                assert r.status_code == status, (key, value, r.text)
                if status == 400:
                    assert "at most 2**63-1" in r.json()["error"]


def test_a_client_s_mistake_is_logged_as_one_line_and_a_call_line_follows_the_access_log(
        kg, caplog):
    import logging

    async def scenario(rt):
        await expect(rt.stub.ModelInfer(infer_request(rt.pb, name="ghost")),
                     grpc.StatusCode.NOT_FOUND)
        await expect(rt.stub.ModelInfer(infer_request(rt.pb, parameters={
            "priority": rt.pb.InferParameter(int64_param=-1)})),
            grpc.StatusCode.INVALID_ARGUMENT)

    with caplog.at_level(logging.INFO):
        run(kg, scenario)
    mistakes = [r for r in caplog.records if "ModelInfer" in r.getMessage()
                and ("NOT_FOUND" in r.getMessage() or "INVALID_ARGUMENT" in r.getMessage())]
    assert len(mistakes) == 2
    assert all(r.levelno == logging.INFO and not r.exc_info for r in mistakes)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    async def calls(log_calls):
        caplog.clear()
        model, _ = served_mlp()
        engine = make_engine([model])
        engine.start()
        registry = kg.grpc_api.model_registry(engine)
        servicer = kg.grpc_api.DeftServicer(
            kg.DataPlane(model_registry=registry), kg.ModelRepositoryExtension(registry),
            engine, RepositoryAccess())
        server = kg.grpc_api.make_server(servicer, 1, log_calls=log_calls)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = kg.pb_grpc.GRPCInferenceServiceStub(channel)
                await stub.ServerLive(kg.pb.ServerLiveRequest())
        finally:
            await server.stop(0)
            engine.stop(1.0)
        return [r for r in caplog.records if "grpc method" in r.getMessage()]

    with caplog.at_level(logging.INFO):
        assert len(asyncio.run(calls(True))) == 1
        assert asyncio.run(calls(False)) == []


CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.DEADLINE_EXCEEDED}


def _mangled_requests(pb: Any, n: int, seed: int = 7) -> list[Any]:
    """``n`` ModelInferRequests for the test model, each a valid one with a few random
    changes: names, datatypes, shapes, contents of another type or length, raw contents,
    parameters of every kind, requested outputs."""
    import random

    rnd = random.Random(seed)
    datatypes = ["FP32", "FP16", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", ""]

    def one() -> Any:
        r = infer_request(pb)
        t = r.inputs[0]
        for _ in range(rnd.randint(1, 3)):
            change = rnd.randrange(12)
            if change == 0:
                t.name = rnd.choice(["", "y", "x ", "X", "x" * 300])
            elif change == 1:
                t.datatype = rnd.choice(datatypes)
            elif change == 2:
                del t.shape[:]
                t.shape.extend(rnd.choice([[], [8], [2, 4, 1], [-1, 4], [0, 4], [2, 3],
                                           [1 << 40, 4], [2, 4, 1, 1, 1]]))
            elif change == 3:
                t.contents.ClearField("fp32_contents")
                t.contents.int_contents.extend(range(rnd.randint(0, 9)))
            elif change == 4:
                t.contents.fp32_contents.extend([1.0] * rnd.randint(1, 5))
            elif change == 5:
                r.raw_input_contents.append(bytes(rnd.randrange(256) for _ in range(
                    rnd.choice([0, 31, 32, 33]))))
            elif change == 6:
                r.inputs.add(name=rnd.choice(["x", "z"]), datatype="FP32", shape=[2, 4])
            elif change == 7:
                del r.inputs[:]
            elif change == 8:
                key = rnd.choice(["priority", "timeout", "binary_data_output", "other"])
                value = rnd.choice([pb.InferParameter(int64_param=rnd.choice([-1, 0, 3])),
                                    pb.InferParameter(bool_param=True),
                                    pb.InferParameter(string_param="5"),
                                    pb.InferParameter.FromString(_uint64(1 << 63))])
                r.parameters[key].CopyFrom(value)
            elif change == 9:
                r.outputs.add(name=rnd.choice(["y", "nope", ""]))
            elif change == 10:
                r.model_version = rnd.choice(["1", "2", "x"])
            else:
                t.parameters["binary_data_size"].CopyFrom(pb.InferParameter(int64_param=32))
        return r

    return [one() for _ in range(n)]


def test_mangled_infer_requests_get_a_client_error_or_an_answer_never_a_server_error(kg):
    async def scenario(rt):
        pb, stub = rt.pb, rt.stub
        codes: dict[str, int] = {}
        for request in _mangled_requests(pb, 300):
            try:
                await stub.ModelInfer(request)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in CLIENT_CODES, (exc.code(), exc.details(), request)
                assert exc.details(), request
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert codes.get("INVALID_ARGUMENT", 0) > 100 and codes.get("OK", 0) > 0, codes
        # and the server still answers a good request
        assert (await stub.ModelInfer(infer_request(pb))).model_name == "mlp"

    run(kg, scenario)
