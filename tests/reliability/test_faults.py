"""Faults that stay where they happen, over the v2 REST routes: a model whose forward raises,
a model that runs out of memory, models that fail to load (corrupt or malicious files), and
an executor thread that dies. In every case the other models keep serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from runtime import model_repository as repo
from runtime.engine import Engine, EngineOptions, ServedModel
from runtime.errors import ModelLoadError, ModelNotFound
from runtime.metrics import Metrics
from scheduler.priority import Priority
from tests.reliability.support import (
    build_app,
    faulty_mlp,
    reference,
    serving,
    valid_body,
    wait_for,
)
from tests.runtime.helpers import make_engine, served_mlp

X8 = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)


def error_of(r) -> str:
    doc = r.json()
    assert set(doc) == {"error"} and isinstance(doc["error"], str), doc
    return doc["error"]


def infer(client, model: str, x: np.ndarray = X8[:1]):
    return client.post(f"/v2/models/{model}/infer", content=valid_body(x))


def output(r) -> np.ndarray:
    out = r.json()["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


# --- a model whose forward raises ------------------------------------------------------------


def test_a_model_whose_forward_raises_fails_only_its_own_requests():
    bad, _, _ = faulty_mlp("bad", raises=RuntimeError("kaboom in unit"))
    good, good_module = served_mlp("good")
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    with serving([bad, good, lc]) as (client, engine):
        for _ in range(3):
            r = infer(client, "bad")
            assert r.status_code == 500
            assert "kaboom in unit" in error_of(r) and "'bad'" in error_of(r)
            r = infer(client, "good", X8[:2])
            assert r.status_code == 200
            np.testing.assert_allclose(output(r), reference(good_module, X8[:2]), rtol=1e-5)
            assert infer(client, "lc").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/bad/ready").json()["ready"] is True  # it loads; it fails
        assert engine.outstanding == 0


# --- out of memory -----------------------------------------------------------------------------

# a batch job runs whole, not as row shards (whose number follows the process's threads)
WHOLE_JOBS = EngineOptions(policy="deft", batch_shards=1)


@pytest.mark.parametrize("oom", [
    lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    lambda: RuntimeError("out of memory"),
    lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                         "21474836480 bytes. Error code 12 (Cannot allocate memory)"),
], ids=["cuda-oom", "runtime-oom", "cpu-alloc"])
def test_out_of_memory_on_a_large_batch_is_retried_in_smaller_pieces(oom):
    model, module, units = faulty_mlp("big", max_batch_size=8, oom_above_rows=2, oom=oom)
    with serving([model], options=WHOLE_JOBS) as (client, engine):
        r = infer(client, "big", X8)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(output(r), reference(module, X8), rtol=1e-5)
        assert max(units.rows_seen) == 8 and units.rows_seen[-1] <= 2  # 8 -> 4 -> 2 rows
        assert engine.outstanding == 0


def test_out_of_memory_in_a_row_shard_is_retried_in_smaller_pieces():
    model, module, units = faulty_mlp("big", max_batch_size=8, oom_above_rows=2)
    options = EngineOptions(policy="deft", batch_shards=2, batch_threads=2)
    with serving([model], options=options) as (client, engine):
        r = infer(client, "big", X8)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(output(r), reference(module, X8), rtol=1e-5)
        assert max(units.rows_seen) == 4 and units.rows_seen[-1] <= 2  # 2 x (4 -> 2 rows)
        assert engine.outstanding == 0


def test_out_of_memory_retries_merged_requests_and_answers_each_its_own_rows():
    """Dynamic batching merges queued requests into one job; the job runs out of memory,
    is retried in pieces, and every request still gets exactly its rows back."""
    model, module, units = faulty_mlp("big", max_batch_size=8, oom_above_rows=3)
    # executor not started: requests queue
    engine = make_engine([model], options=EngineOptions(policy="layer", batch_shards=1))
    parts = [X8[:3], X8[3:4], X8[4:8]]

    async def go():
        futs = [asyncio.ensure_future(engine.infer("big", {"x": x})) for x in parts]
        await asyncio.sleep(0)
        engine.start()
        return await asyncio.gather(*futs)

    results = asyncio.run(go())
    engine.stop(1.0)
    assert max(units.rows_seen) == 8  # one merged job of 8 rows ran out of memory
    for x, result in zip(parts, results, strict=True):
        np.testing.assert_allclose(result["y"], reference(module, x), rtol=1e-5)


def test_out_of_memory_on_a_single_row_fails_that_job_only():
    model, _, units = faulty_mlp("huge", max_batch_size=8, oom_above_rows=0)
    lc, lc_module = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    other, _ = served_mlp("other")
    with serving([model, lc, other], options=WHOLE_JOBS) as (client, engine):
        r = infer(client, "huge", X8[:4])
        assert r.status_code == 500 and "OutOfMemoryError" in error_of(r)
        assert sorted(set(units.rows_seen), reverse=True) == [4, 2, 1]  # tried smaller first
        for _ in range(3):
            r = infer(client, "lc", X8[:1])
            assert r.status_code == 200
            np.testing.assert_allclose(output(r), reference(lc_module, X8[:1]), rtol=1e-5)
            assert infer(client, "other").status_code == 200
            assert infer(client, "huge").status_code == 500
        assert client.get("/v2/health/ready").status_code == 200
        assert engine.outstanding == 0


def test_latency_critical_requests_are_answered_while_a_batch_job_runs_out_of_memory():
    release = threading.Event()
    big, _, units = faulty_mlp("big", max_batch_size=8, oom_above_rows=1, gate=release)
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    with serving([big, lc]) as (client, engine):
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(1) as pool:
            batch = pool.submit(infer, client, "big", X8)
            assert wait_for(lambda: units.started.is_set())
            for _ in range(5):  # the batch job is held mid-retry; the lane keeps answering
                assert infer(client, "lc").status_code == 200
            release.set()
            assert batch.result(10).status_code == 200
        assert engine.outstanding == 0


# --- models that fail to load --------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def write_repository(root: Path, marker: Path) -> Path:
    """A repository with one good model, one corrupt archive, one full pickle, one torch.save
    archive in a .pt2 file, and one folder with a config the model does not fit."""
    config = {"max_batch_size": 4, "max_units": 2,
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
              "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(_Small().eval(), (torch.randn(2, 4),),
                                  dynamic_shapes={"x": {0: batch}})
    for name in ("good", "corrupt", "pickled", "disguised", "misfit"):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))
    torch.export.save(program, root / "good" / "model.pt2")
    torch.export.save(program, root / "misfit" / "model.pt2")
    (root / "misfit" / "config.yaml").write_text(yaml.safe_dump(
        {**config, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 5]}]}))
    (root / "corrupt" / "model.pt2").write_bytes(b"PK\x03\x04" + os.urandom(512))
    (root / "pickled" / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    import io

    buf = io.BytesIO()
    torch.save({"weights": _Payload(marker)}, buf)
    (root / "disguised" / "model.pt2").write_bytes(buf.getvalue())
    return root


def repository_engine(root: Path) -> Engine:
    """An engine over a real repository, loading every model the way the server starts."""

    def load(name: str) -> ServedModel:
        sources = {s.name: s for s in repo.discover(root)}
        if name not in sources:
            raise ModelNotFound(name)
        return ServedModel.from_loaded(repo.load(sources[name], profile=False))

    from prometheus_client import CollectorRegistry

    engine = Engine(load, lambda: [s.name for s in repo.discover(root)], EngineOptions(),
                    Metrics(CollectorRegistry()))
    for item in engine.index():
        with contextlib.suppress(ModelLoadError):  # reported in the index; the others serve
            engine.load_sync(item["name"])
    engine.start()
    return engine


def test_models_that_fail_to_load_are_reported_and_the_others_serve(tmp_path):
    from fastapi.testclient import TestClient

    marker = tmp_path / "code-ran"
    root = write_repository(tmp_path / "models", marker)
    engine = repository_engine(root)
    try:
        with TestClient(build_app(engine)) as client:
            index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
            assert {n: m["state"] for n, m in index.items()} == {
                "good": "READY", "corrupt": "FAILED", "pickled": "FAILED",
                "disguised": "FAILED", "misfit": "FAILED"}
            assert "refusing model.pkl" in index["pickled"]["reason"]
            assert "not a torch.export archive" in index["disguised"]["reason"]
            assert "not a torch.export archive" in index["corrupt"]["reason"]
            assert "5 in config.yaml" in index["misfit"]["reason"]
            for name in ("corrupt", "pickled", "disguised", "misfit"):
                r = infer(client, name)
                assert r.status_code == 503 and name in error_of(r)
                r = client.post(f"/v2/repository/models/{name}/load")
                assert r.status_code == 500 and "failed to load" in error_of(r)
            r = infer(client, "good", X8[:4])
            assert r.status_code == 200 and output(r).shape == (4, 3)
            assert client.get("/v2/models").json() == {"models": ["good"]}
            assert client.get("/v2/health/ready").status_code == 200
    finally:
        engine.stop(1.0)
    assert not marker.exists()  # nothing pickled was ever run


# --- the executor thread dies --------------------------------------------------------------------


def die(_scheduler) -> None:
    """Ends the executor thread from inside (as an error the loop does not catch would)."""
    raise SystemExit()


dies_quietly = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@dies_quietly
@pytest.mark.parametrize("lane", ["batch", "latency-critical"])
def test_a_dead_executor_thread_is_reported_not_ready_and_restarted(lane):
    batch, _ = served_mlp("batch")
    lc, _ = served_mlp("lc", Priority.LATENCY_CRITICAL, slo_ms=1000)
    with serving([batch, lc]) as (client, engine):
        assert client.get("/v2/health/ready").status_code == 200
        executor = engine.executor if lane == "batch" else engine.lc_executor
        assert executor is not None
        executor.inbox.call(die)
        assert wait_for(lambda: not executor.alive)
        r = client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        r = client.get("/v2/health/ready")  # the probe restarted it
        assert r.status_code == 200 and r.json() == {"ready": True}
        assert executor.alive
        assert infer(client, "batch").status_code == 200
        assert infer(client, "lc").status_code == 200
        assert engine.metrics.executor_restarts._value.get() == 1


@dies_quietly
def test_a_request_restarts_a_dead_executor_thread_itself():
    model, _ = served_mlp("mlp")
    with serving([model]) as (client, engine):
        engine.inbox.call(die)
        assert wait_for(lambda: not engine.executor.alive)
        assert infer(client, "mlp").status_code == 200  # answered, not stuck in a dead inbox
        assert client.get("/v2/health/ready").status_code == 200


def test_errors_are_v2_json_with_their_status():
    model, _ = served_mlp("mlp")
    with serving([model]) as (client, _):
        for path, method, status in [
            ("/v2/models/ghost/infer", "POST", 404),
            ("/v2/models/mlp/infer", "PUT", 405),
            ("/v2/nowhere", "GET", 404),
        ]:
            r = client.request(method, path, content=b"{}")
            assert r.status_code == status and json.loads(r.content)["error"]
