"""Loading a ready model again: unchanged files keep it, changed files reload it, the
requests admitted before finish on the version they were admitted for."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from runtime import model_repository as repo
from runtime import segments
from runtime.engine import Engine, EngineOptions, ServedModel
from runtime.errors import ModelLoadError, ModelNotFound
from runtime.metrics import Metrics
from runtime.serve import make_loader
from runtime.tensors import TensorSpec
from scheduler.priority import ModelSettings, Priority
from scheduler.profile import Profile
from tests.reliability.support import build_app
from tests.runtime.helpers import Scale, write_model

X = np.arange(8, dtype=np.float32).reshape(2, 4)
@pytest.fixture
def served_repo(tmp_path, monkeypatch):
    """An engine over a real repository with one model, ``scale``, loaded at k=1."""
    monkeypatch.setenv("DEFT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "models"
    write_model(root / "scale", 1.0, 2)
    loader, available, stamp = make_loader(root, None, torch.device("cpu"))
    calls = []

    def load(name: str) -> ServedModel:
        calls.append(name)
        return loader(name)

    engine = Engine(load, available, EngineOptions(), Metrics(CollectorRegistry()), stamp=stamp)
    engine.load_sync("scale")
    engine.start()
    yield engine, root, calls
    engine.stop(1.0)


def answer(engine: Engine, x: np.ndarray = X) -> np.ndarray:
    return asyncio.run(engine.infer("scale", {"x": x}))["y"]


def test_a_load_of_a_ready_model_whose_files_did_not_change_keeps_it(served_repo):
    engine, _, calls = served_repo
    before = engine.model("scale")
    asyncio.run(engine.load("scale"))
    assert engine.model("scale") is before and calls == ["scale"]


def test_a_load_after_the_files_changed_serves_the_new_version(served_repo):
    engine, root, calls = served_repo
    np.testing.assert_allclose(answer(engine), X, atol=1e-4)
    old_units = engine.model("scale").num_units
    write_model(root / "scale", 3.0, 6)
    asyncio.run(engine.load("scale"))
    served = engine.model("scale")
    assert calls == ["scale", "scale"] and served.generation == 1
    np.testing.assert_allclose(answer(engine), 3 * X, atol=1e-4)
    assert engine.index() == [{"name": "scale", "version": "1", "state": "READY"}]
    # the scheduler plans with the new version's profile
    assert engine.scheduler.profiles["scale"].num_units == served.num_units != old_units
    asyncio.run(engine.load("scale"))  # and nothing changed since
    assert engine.model("scale") is served


def test_a_reload_that_fails_leaves_the_version_before_serving_and_says_so(served_repo):
    from fastapi.testclient import TestClient

    engine, root, _ = served_repo
    (root / "scale" / "model.pt2").write_bytes(b"PK\x03\x04" + os.urandom(256))
    with TestClient(build_app(engine)) as client:
        r = client.post("/v2/repository/models/scale/load")
        assert r.status_code == 500
        error = r.json()["error"]
        assert "'scale' failed to reload" in error and "keeps serving" in error
        (entry,) = client.post("/v2/repository/index").json()
        assert entry["state"] == "READY" and "the last load failed" in entry["reason"]
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                            "data": X.ravel().tolist()}]}
        r = client.post("/v2/models/scale/infer", content=json.dumps(body))
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], X.ravel(), atol=1e-4)
    write_model(root / "scale", 2.0, 2)  # fixed: the next load takes it, the reason goes
    asyncio.run(engine.load("scale"))
    np.testing.assert_allclose(answer(engine), 2 * X, atol=1e-4)
    assert "reason" not in engine.index()[0]


def test_a_model_gone_from_the_repository_keeps_serving_when_loaded_again(served_repo):
    engine, root, _ = served_repo
    for f in (root / "scale").iterdir():
        f.unlink()
    (root / "scale").rmdir()
    with pytest.raises(ModelLoadError, match="failed to reload: model 'scale' is not found"):
        asyncio.run(engine.load("scale"))
    np.testing.assert_allclose(answer(engine), X, atol=1e-4)


def test_the_files_stamp_follows_a_swapped_link(tmp_path):
    """Kubernetes volumes (and storage initializers) swap a link to a new folder."""
    write_model(tmp_path / "v1", 1.0, 2)
    write_model(tmp_path / "v2", 2.0, 2)
    (tmp_path / "live").symlink_to(tmp_path / "v1")
    source = repo.discover(tmp_path / "live", "m")[0]
    first = repo.stamp(source)
    assert repo.stamp(source) == first
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", tmp_path / "live")
    assert repo.stamp(repo.discover(tmp_path / "live", "m")[0]) != first


def _version(k: float, layers: int, generation_files: str) -> ServedModel:
    seg = segments.split("scale", Scale(k, layers).eval(), max_units=8, input_names=["x"],
                         output_names=["y"])
    return ServedModel(
        name="scale", segmented=seg,
        inputs=(TensorSpec("x", "FP32", (-1, 4)),), outputs=(TensorSpec("y", "FP32", (-1, 4)),),
        settings=ModelSettings(Priority.BATCH), profile=Profile({1: (1e-4,) * seg.num_units}),
        max_batch_size=8, stamp=(generation_files,))


def test_requests_admitted_before_a_reload_run_on_their_version_and_never_share_a_job():
    versions = {"v1": _version(1.0, 2, "v1"), "v2": _version(5.0, 7, "v2")}
    assert versions["v1"].num_units != versions["v2"].num_units
    files = {"now": "v1"}
    engine = Engine(lambda name: versions[files["now"]], lambda: ["scale"],
                    EngineOptions(policy="deft"), Metrics(CollectorRegistry()),
                    stamp=lambda name: (files["now"],))
    engine.load_sync("scale")

    async def go():
        # queued while the executor has not started: they wait in the scheduler's inbox
        before = [asyncio.ensure_future(engine.infer("scale", {"x": X[i:i + 1]}))
                  for i in range(2)]
        await asyncio.sleep(0)
        files["now"] = "v2"
        engine.load_sync("scale")
        after = [asyncio.ensure_future(engine.infer("scale", {"x": X[i:i + 1]}))
                 for i in range(2)]
        await asyncio.sleep(0)
        engine.start()
        return await asyncio.gather(*before), await asyncio.gather(*after)

    try:
        before, after = asyncio.run(go())
    finally:
        engine.stop(1.0)
    for i in range(2):
        np.testing.assert_allclose(before[i]["y"], X[i:i + 1], atol=1e-4)
        np.testing.assert_allclose(after[i]["y"], 5 * X[i:i + 1], atol=1e-4)
    assert engine.outstanding == 0


def test_a_model_served_from_elsewhere_is_never_reloaded():
    served = _version(1.0, 2, "v1")
    served = ServedModel(**{**served.__dict__, "stamp": None})
    engine = Engine(lambda name: (_ for _ in ()).throw(ModelNotFound(name)), lambda: [],
                    EngineOptions(), Metrics(CollectorRegistry()), stamp=lambda name: None)
    engine.add_served(served)
    assert engine.load_sync("scale") is served
