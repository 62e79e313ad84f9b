"""Every mmesh.ModelRuntime call through a real gRPC client, against an in-process server with
a real engine and small real torch models."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
import torch

from runtime.errors import ModelLoadError
from runtime.modelmesh import memory
from runtime.modelmesh.servicer import ID_INJECTION_PATHS
from runtime.modelmesh.stubs import pb
from scheduler.priority import ModelSettings, Priority, PriorityTable
from tests.modelmesh.support import MIB, WEIGHT_BYTES, Tiny, model_folder, run

DETECTOR = "detector__isvc-6b2eb0b8bf"
CLASSIFIER = "classifier__isvc-0123456789"
LOADED_SIZE = memory.with_margin(WEIGHT_BYTES)


async def expect_code(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


def test_runtime_status_reports_capacity_and_the_v2_methods():
    async def scenario(m):
        status = await m.status()
        assert status.status == pb.RuntimeStatusResponse.READY
        assert status.capacityInBytes == 64 * MIB
        assert status.maxLoadingConcurrency == 1
        assert status.modelLoadingTimeoutMs >= 60_000
        assert 0 < status.defaultModelSizeInBytes <= status.capacityInBytes
        assert status.runtimeVersion.startswith("deft")
        assert not status.limitModelConcurrency and not status.allowAnyMethod
        paths = {k: list(v.idInjectionPath) for k, v in status.methodInfos.items()}
        assert paths["inference.GRPCInferenceService/ModelInfer"] == [1]
        assert paths == ID_INJECTION_PATHS

    run(scenario)


def test_load_serves_under_the_id_and_prioritises_under_the_isvc_name(tmp_path, tiny_pt2):
    lc = {"priority": "latency-critical", "slo_ms": 20, "max_batch_size": 4}
    detector = model_folder(tmp_path, "d", tiny_pt2, lc)
    classifier = model_folder(tmp_path, "c", tiny_pt2) / "model.pt2"  # a file, not a folder

    async def scenario(m):
        assert await m.load(DETECTOR, detector) == LOADED_SIZE
        assert await m.load(CLASSIFIER, classifier) == LOADED_SIZE
        assert m.registered == {DETECTOR, CLASSIFIER}
        assert m.models.used_bytes == 2 * LOADED_SIZE
        for model_id in (DETECTOR, CLASSIFIER):
            reply = await m.stub.modelSize(pb.ModelSizeRequest(modelId=model_id))
            assert reply.sizeInBytes == LOADED_SIZE
        x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
        out = await m.engine.infer(DETECTOR, {"x": x})
        expected = Tiny().eval()(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(next(iter(out.values())), expected, rtol=1e-5, atol=1e-6)

        engine = m.engine
        assert engine.settings_for(DETECTOR, engine.model(DETECTOR)).priority is (
            Priority.LATENCY_CRITICAL)
        assert engine.settings_for(CLASSIFIER, engine.model(CLASSIFIER)).priority is Priority.BATCH
        # the controller's table names the InferenceService, and wins over config.yaml
        engine.apply_priorities(PriorityTable({
            "classifier": ModelSettings(Priority.LATENCY_CRITICAL, 5.0),
            "detector": ModelSettings(Priority.BATCH),
        }))
        assert engine.settings_for(CLASSIFIER, engine.model(CLASSIFIER)) == ModelSettings(
            Priority.LATENCY_CRITICAL, 5.0)
        assert engine.settings_for(DETECTOR, engine.model(DETECTOR)).priority is Priority.BATCH

    run(scenario)


def test_load_twice_answers_like_the_first_and_loads_once(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2)

    async def scenario(m):
        m.loader.hold()
        first = asyncio.ensure_future(m.load(DETECTOR, folder))
        await m.loader.wait_started()
        second = asyncio.ensure_future(m.load(DETECTOR, folder))
        m.loader.release.set()
        assert await asyncio.gather(first, second) == [LOADED_SIZE, LOADED_SIZE]
        assert await m.load(DETECTOR, folder) == LOADED_SIZE
        assert m.loader.calls == [DETECTOR]

    run(scenario)


def test_unload_is_idempotent_and_frees_the_model(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2)

    async def scenario(m):
        await m.unload("never-loaded__isvc-00")
        await m.load(DETECTOR, folder)
        await m.unload(DETECTOR)
        await m.unload(DETECTOR)
        assert m.registered == set() and m.models.used_bytes == 0
        assert DETECTOR not in m.engine.ready_models()
        assert DETECTOR not in [e["name"] for e in m.engine.index()]  # not known any more
        await expect_code(m.stub.modelSize(pb.ModelSizeRequest(modelId=DETECTOR)),
                          grpc.StatusCode.NOT_FOUND)
        assert await m.load(DETECTOR, folder) == LOADED_SIZE  # loads again after an unload
        assert m.engine.model_ready(DETECTOR)

    run(scenario)


def test_load_cancelled_then_unloaded_leaves_nothing_loaded(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2)

    async def scenario(m):
        m.loader.hold()
        call = m.stub.loadModel(pb.LoadModelRequest(modelId=DETECTOR, modelPath=str(folder)))
        await m.loader.wait_started()
        call.cancel()  # ModelMesh gave up on the load (its timeout) ...
        await m.unload(DETECTOR)  # ... and unloads at once; the load is still running
        assert m.models.loading() == [] and m.models.abandoned == 1
        assert m.models.used_bytes > 0  # its memory counts until the thread ends
        m.loader.release.set()
        await m.models.settle()
        assert m.models.abandoned == 0 and m.models.used_bytes == 0
        assert m.registered == set()
        with pytest.raises(Exception, match="not found"):
            m.engine.model(DETECTOR)
        assert await m.load(DETECTOR, folder) == LOADED_SIZE

    run(scenario)


def test_unload_during_load_fails_the_load_with_cancelled(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2)

    async def scenario(m):
        m.loader.hold()
        load = asyncio.ensure_future(m.load(DETECTOR, folder))
        await m.loader.wait_started()
        await m.unload(DETECTOR)
        m.loader.release.set()
        await expect_code(load, grpc.StatusCode.CANCELLED)
        assert m.registered == set() and m.models.used_bytes == 0

    run(scenario)


def test_runtime_status_purges_loaded_and_loading_models(tmp_path, tiny_pt2):
    a = model_folder(tmp_path, "a", tiny_pt2)
    b = model_folder(tmp_path, "b", tiny_pt2)
    c = model_folder(tmp_path, "c", tiny_pt2)

    async def scenario(m):
        await m.load(DETECTOR, a)
        await m.load(CLASSIFIER, b)
        m.loader.hold()
        loading = asyncio.ensure_future(m.load("third", c))
        await m.loader.wait_started()
        # ModelMesh restarted: it asks for the status again before anything else
        status = await m.status()
        assert status.status == pb.RuntimeStatusResponse.STARTING  # a purged load still runs
        assert m.registered == set() and m.models.loaded() == []
        assert not {DETECTOR, CLASSIFIER} & {e["name"] for e in m.engine.index()}
        m.loader.release.set()
        await expect_code(loading, grpc.StatusCode.CANCELLED)
        status = await m.status()
        assert status.status == pb.RuntimeStatusResponse.READY
        assert status.capacityInBytes == 64 * MIB and m.models.used_bytes == 0
        assert m.registered == set()

    run(scenario)


def test_a_load_that_would_not_fit_is_refused_without_being_tried(tmp_path, tiny_pt2):
    a = model_folder(tmp_path, "a", tiny_pt2)
    b = model_folder(tmp_path, "b", tiny_pt2)
    predicted = memory.with_margin(tiny_pt2.stat().st_size)
    capacity = predicted + MIB // 2  # room for one model, not two

    async def scenario(m):
        assert await m.load(DETECTOR, a) == LOADED_SIZE
        details = await expect_code(m.load(CLASSIFIER, b), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert CLASSIFIER in details and "free" in details
        assert m.loader.calls == [DETECTOR]  # never tried
        assert m.registered == {DETECTOR} and m.models.used_bytes == LOADED_SIZE
        await m.unload(DETECTOR)
        assert await m.load(CLASSIFIER, b) == LOADED_SIZE

    run(scenario, capacity_bytes=capacity)


def test_a_model_larger_than_predicted_is_discarded_when_it_does_not_fit(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "a", tiny_pt2)
    predicted = memory.with_margin(tiny_pt2.stat().st_size)

    async def scenario(m):
        m.models._sizer = lambda served: predicted * 2  # e.g. weights materialised on load
        await expect_code(m.load(DETECTOR, folder), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert m.registered == set() and m.models.used_bytes == 0
        with pytest.raises(Exception, match="not found"):
            m.engine.model(DETECTOR)

    run(scenario, capacity_bytes=predicted + MIB // 2)


@pytest.mark.parametrize("make,code,words", [
    (lambda d: d / "missing", grpc.StatusCode.NOT_FOUND, "does not exist"),
    (lambda d: _write(d / "m" / "model.pt2", b"not a zip archive"),
     grpc.StatusCode.INVALID_ARGUMENT, "not a torch.export archive"),
    (lambda d: _write(d / "m" / "model.pt2", b"PK\x03\x04 truncated zip"),
     grpc.StatusCode.INVALID_ARGUMENT, "model.pt2"),
    (lambda d: _write(d / "m" / "model.pth", b"\x80\x04pickle"),
     grpc.StatusCode.INVALID_ARGUMENT, "refusing model.pth"),
    (lambda d: _write(d / "m" / "weights.txt", b"text"),
     grpc.StatusCode.INVALID_ARGUMENT, "not a model file"),
    (lambda d: (d / "empty").mkdir() or d / "empty", grpc.StatusCode.INVALID_ARGUMENT,
     "no model file"),
    (lambda d: "", grpc.StatusCode.INVALID_ARGUMENT, "no modelPath"),
])
def test_bad_model_files_are_refused_and_the_runtime_keeps_serving(
        tmp_path, tiny_pt2, make, code, words):
    bad = make(tmp_path)
    good = model_folder(tmp_path, "good", tiny_pt2)

    async def scenario(m):
        details = await expect_code(m.load("bad", bad), code)
        assert words in details
        assert m.models.used_bytes == 0 and m.registered == set()
        assert await m.load(DETECTOR, good) == LOADED_SIZE
        assert (await m.status()).status == pb.RuntimeStatusResponse.READY

    run(scenario)


def test_a_bad_config_is_invalid_argument(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2, {"priority": "urgent"})

    async def scenario(m):
        details = await expect_code(m.load(DETECTOR, folder), grpc.StatusCode.INVALID_ARGUMENT)
        assert "config.yaml" in details

    run(scenario)


def test_an_unexpected_loader_failure_is_internal_and_not_fatal(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2)
    failures = iter([RuntimeError("disk on fire"), ModelLoadError("model 'x': unreadable")])

    def flaky(source):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        from runtime.modelmesh.loading import load_served

        return load_served(source, torch.device("cpu"))

    async def scenario(m):
        details = await expect_code(m.load(DETECTOR, folder), grpc.StatusCode.INTERNAL)
        assert "RuntimeError: disk on fire" in details
        await expect_code(m.load(DETECTOR, folder), grpc.StatusCode.INVALID_ARGUMENT)
        assert await m.load(DETECTOR, folder) == LOADED_SIZE

    run(scenario, loader=flaky)


def test_predict_model_size_is_quick_and_conservative(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "d", tiny_pt2)

    async def scenario(m):
        async def predict(path, key=""):
            reply = await m.stub.predictModelSize(pb.PredictModelSizeRequest(
                modelId=DETECTOR, modelPath=str(path), modelKey=key))
            return reply.sizeInBytes

        on_disk = await predict(folder)
        assert on_disk == memory.with_margin(tiny_pt2.stat().st_size)
        assert on_disk >= await m.load(DETECTOR, folder)
        # not pulled yet: ModelMesh's storage helper puts the download size in the key
        key = json.dumps({"model_type": {"name": "pytorch-export"}, "disk_size_bytes": 10 * MIB})
        assert await predict(tmp_path / "later", key) == memory.with_margin(10 * MIB)
        default = m.models.options.default_model_size_bytes
        assert await predict(tmp_path / "later", "not json") == default
        assert await predict("", "") == default
        assert m.loader.calls == [DETECTOR]

    run(scenario)


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path if path.suffix != ".pt2" else path.parent


def test_a_load_that_ran_out_of_memory_is_resource_exhausted_even_when_wrapped():
    from runtime.modelmesh.servicer import status_code

    def wrapped(cause: BaseException) -> ModelLoadError:
        try:
            raise cause
        except BaseException as exc:  # noqa: BLE001
            try:
                raise ModelLoadError("model 'm': failed to run on example inputs") from exc
            except ModelLoadError as load_error:
                return load_error

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert status_code(oom) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code(wrapped(oom)) is grpc.StatusCode.RESOURCE_EXHAUSTED
    host = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")
    assert status_code(wrapped(host)) is grpc.StatusCode.RESOURCE_EXHAUSTED
    bad = wrapped(ValueError("shape mismatch"))
    assert status_code(bad) is grpc.StatusCode.INVALID_ARGUMENT
