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
from runtime.errors import ModelLoadError, ModelNotFound, ModelNotReady
from runtime.metrics import Metrics
from runtime.serve import make_loader
from runtime.tensors import TensorSpec
from scheduler.priority import ModelSettings, Priority
from scheduler.profile import Profile
from tests.reliability.support import build_app
from tests.runtime.helpers import Scale, write_model

X = np.arange(8, dtype=np.float32).reshape(2, 4)
def _engine_over(versions: dict, files: dict, name: str = "mlp", **options) -> Engine:
    """An engine serving ``name`` from ``versions``: the loader hands out the version
    ``files["now"]`` names, and that is the files' stamp (change it, and a load reloads)."""
    return Engine(lambda _: versions[files["now"]], lambda: [name],
                  EngineOptions(**options), Metrics(CollectorRegistry()),
                  stamp=lambda _: (files["now"],))


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
    before = engine.model("scale")
    old_units = before.num_units
    write_model(root / "scale", 3.0, 6)
    asyncio.run(engine.load("scale"))
    served = engine.model("scale")
    assert calls == ["scale", "scale"] and served.generation != before.generation
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
    engine = _engine_over(versions, files, "scale", policy="deft")
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


def _repository_engine(root, options: EngineOptions | None = None) -> Engine:
    loader, available, stamp = make_loader(root, None, torch.device("cpu"))
    return Engine(loader, available, options or EngineOptions(), Metrics(CollectorRegistry()),
                  stamp=stamp)


def test_requests_of_the_version_before_are_never_batched_past_its_bound(tmp_path, monkeypatch):
    """Its program was exported for batches up to 4: two queued requests of 3 rows each
    stay two jobs, although the version loaded after takes 8."""
    monkeypatch.setenv("DEFT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "models"
    write_model(root / "scale", 1.0, 2, max_batch_size=4)
    # without the CPU lane's row shards, which would split a job of 6 into two of 3
    engine = _repository_engine(root, EngineOptions(cpu_lane=False))
    engine.load_sync("scale")
    x3 = np.ones((3, 4), dtype=np.float32)

    async def go():
        before = [asyncio.ensure_future(engine.infer("scale", {"x": x3})) for _ in range(2)]
        await asyncio.sleep(0)  # queued: the executor has not started
        write_model(root / "scale", 2.0, 2, max_batch_size=8)
        engine.load_sync("scale")
        engine.start()
        return await asyncio.gather(*before)

    try:
        answers = asyncio.run(go())
    finally:
        engine.stop(1.0)
    for a in answers:
        np.testing.assert_allclose(a["y"], x3, atol=1e-4)


def test_a_request_checked_against_the_version_before_runs_on_it(served_repo):
    """A front end checks the inputs against the version serving, then reads the body; a
    reload in between must not hand them to a version that takes other inputs."""
    engine, root, _ = served_repo
    before = engine.model("scale")
    cfg = root / "scale" / "config.yaml"
    write_model(root / "scale", 3.0, 2)
    cfg.write_text(cfg.read_text().replace("name: y", "name: z"))  # the output renamed
    asyncio.run(engine.load("scale"))
    assert [s.name for s in engine.model("scale").outputs] == ["z"]
    out = asyncio.run(engine.infer("scale", {"x": X}, served=before))
    np.testing.assert_allclose(out["y"], X, atol=1e-4)
    assert "z" in asyncio.run(engine.infer("scale", {"x": X}))


def test_admission_uses_the_new_settings_as_soon_as_the_reload_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "models"
    write_model(root / "scale", 1.0, 2, max_batch_size=2)
    engine = _repository_engine(root)  # not started: the scheduler's copy stays behind
    engine.load_sync("scale")
    with pytest.raises(Exception, match="max batch size of 2"):
        engine.check_batch("scale", 4)
    write_model(root / "scale", 1.0, 2, max_batch_size=4)
    cfg = root / "scale" / "config.yaml"
    cfg.write_text(cfg.read_text() + "priority: latency-critical\nslo_ms: 50\n")
    engine.load_sync("scale")
    engine.check_batch("scale", 4)
    assert engine.current_settings("scale") == ModelSettings(Priority.LATENCY_CRITICAL, 50.0, 4)
    engine.stop(1.0)


def test_an_unload_while_a_reload_loads_is_not_undone():
    import threading

    old, new = _version(1.0, 2, "v1"), _version(2.0, 3, "v2")
    inside, release = threading.Event(), threading.Event()
    files = {"now": "v1"}

    def loader(name: str) -> ServedModel:
        if files["now"] == "v1":
            return old
        inside.set()
        assert release.wait(30)
        return new

    engine = Engine(loader, lambda: ["scale"], EngineOptions(), Metrics(CollectorRegistry()),
                    stamp=lambda name: (files["now"],))
    engine.load_sync("scale")
    files["now"] = "v2"
    errors: list[Exception] = []

    def reload() -> None:
        try:
            engine.load_sync("scale")
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=reload)
    worker.start()
    assert inside.wait(30)
    asyncio.run(engine.unload("scale"))
    release.set()
    worker.join(30)
    assert [str(e) for e in errors] == ["model 'scale' was unloaded while it reloaded"]
    assert not engine.model_ready("scale") and engine.index()[0]["state"] == "UNAVAILABLE"
    engine.load_sync("scale")  # a load after the unload loads it again
    assert engine.model("scale") is new


def test_the_version_a_reload_replaced_is_released_once_its_last_request_is_answered():
    import threading

    versions = {"v1": _version(1.0, 2, "v1"), "v2": _version(5.0, 3, "v2")}
    files = {"now": "v1"}
    engine = _engine_over(versions, files, "scale", policy="deft")
    released = threading.Event()
    names: list[str] = []
    engine.on_released.append(lambda name: (names.append(name), released.set()))
    engine.load_sync("scale")

    async def go():
        before = asyncio.ensure_future(engine.infer("scale", {"x": X[:1]}))
        await asyncio.sleep(0)
        files["now"] = "v2"
        del versions["v1"]  # only the engine and the queued request hold it now
        engine.load_sync("scale")
        assert not released.is_set()  # a request still needs it
        engine.start()
        return await before

    try:
        out = asyncio.run(go())
    finally:
        engine.stop(1.0)
    np.testing.assert_allclose(out["y"], X[:1], atol=1e-4)
    assert released.wait(10) and names == ["scale"]


def _mlp_version(stamp: str, max_batch_size: int, named: int | None) -> ServedModel:
    from tests.runtime.helpers import Mlp

    seg = segments.split("mlp", Mlp().eval(), max_units=3, input_names=["x"],
                         output_names=["y"])
    return ServedModel(
        name="mlp", segmented=seg,
        inputs=(TensorSpec("x", "FP32", (-1, 4)),), outputs=(TensorSpec("y", "FP32", (-1, 3)),),
        settings=ModelSettings(Priority.BATCH, None, named),
        profile=Profile({1: (1e-4,) * seg.num_units}), max_batch_size=max_batch_size,
        stamp=(stamp,))




def test_the_version_before_keeps_its_own_batch_bound_where_its_config_named_none():
    versions = {"v1": _mlp_version("v1", 2, None), "v2": _mlp_version("v2", 8, 8)}
    files = {"now": "v1"}
    engine = _engine_over(versions, files)
    engine.load_sync("mlp")
    files["now"] = "v2"
    engine.load_sync("mlp")
    assert engine.batch_limit("mlp") == 8
    assert engine.batch_limit("mlp", versions["v1"]) == 2
    with pytest.raises(Exception, match="max batch size of 2"):
        engine.check_batch("mlp", 3, versions["v1"])
    engine.stop(1.0)


def test_an_unload_while_a_load_waits_for_another_is_not_undone():
    import threading

    inside, release = threading.Event(), threading.Event()

    def loader(name: str) -> ServedModel:
        if name == "slow":
            inside.set()
            assert release.wait(30)
        served = _mlp_version("v1", 2, None)
        served.name = name
        return served

    engine = Engine(loader, lambda: ["slow", "mlp"], EngineOptions(),
                    Metrics(CollectorRegistry()))
    errors: dict[str, Exception] = {}

    def load(name: str) -> None:
        try:
            engine.load_sync(name)
        except Exception as exc:
            errors[name] = exc

    slow = threading.Thread(target=load, args=("slow",))
    slow.start()
    assert inside.wait(30)  # "slow" holds the load lock
    waiting = threading.Thread(target=load, args=("mlp",))
    waiting.start()
    for _ in range(1000):  # until "mlp" shows as loading (its load waits for the lock)
        if engine.index()[0]["state"] == "LOADING":
            break
        threading.Event().wait(0.01)
    asyncio.run(engine.unload("mlp"))
    release.set()
    slow.join(30)
    waiting.join(30)
    assert str(errors["mlp"]) == "model 'mlp' was unloaded while its load waited"
    assert not engine.model_ready("mlp") and engine.model_ready("slow")
    engine.stop(1.0)


def _two_mlp_versions_serving_the_first():
    """Two versions of "mlp", the first loaded; the event is set once a replaced version
    is released."""
    import threading

    versions = {"v1": _mlp_version("v1", 2, None), "v2": _mlp_version("v2", 2, None)}
    files = {"now": "v1"}
    engine = _engine_over(versions, files)
    released = threading.Event()
    engine.on_released.append(lambda name: released.set())
    engine.load_sync("mlp")
    return versions, files, engine, released


def test_a_replaced_version_lets_go_of_its_weights_without_a_garbage_collection():
    import gc
    import weakref

    versions, files, engine, released = _two_mlp_versions_serving_the_first()
    weights = [weakref.ref(p) for u in versions["v1"].segmented._units  # type: ignore[attr-defined]
               if isinstance(u.fn, torch.nn.Module) for p in u.fn.parameters()]
    assert weights
    x = np.ones((1, 4), dtype=np.float32)
    gc.disable()  # nothing found by a collection counts: reference counting alone
    try:
        async def go():
            before = asyncio.ensure_future(engine.infer("mlp", {"x": x}))
            await asyncio.sleep(0)
            files["now"] = "v2"
            del versions["v1"]
            engine.load_sync("mlp")
            engine.start()
            return await before

        out = asyncio.run(go())
        assert released.wait(10)
        assert [w() for w in weights] == [None] * len(weights)
    finally:
        gc.enable()
        engine.stop(1.0)
    assert out["y"].shape == (1, 3)


def test_requests_queued_for_an_unloaded_version_answer_503_when_another_loaded_since():
    versions = {"v1": _version(1.0, 2, "v1"), "v2": _version(5.0, 3, "v2")}
    files = {"now": "v1"}
    engine = _engine_over(versions, files, "scale")
    engine.load_sync("scale")

    async def go():
        before = asyncio.ensure_future(engine.infer("scale", {"x": X[:1]}))
        await asyncio.sleep(0)  # queued: the executor has not started
        await engine.unload("scale")
        files["now"] = "v2"
        engine.load_sync("scale")  # a fresh load, not a reload
        after = asyncio.ensure_future(engine.infer("scale", {"x": X[:1]}))
        await asyncio.sleep(0)
        engine.start()
        return await asyncio.gather(before, after, return_exceptions=True)

    try:
        before, after = asyncio.run(go())
    finally:
        engine.stop(1.0)
    assert isinstance(before, ModelNotReady) and "was unloaded" in str(before)
    np.testing.assert_allclose(after["y"], 5 * X[:1], atol=1e-4)
    assert engine.outstanding == 0


def test_a_reload_whose_ready_hook_fails_still_releases_the_version_it_replaced():
    import gc

    versions, files, engine, released = _two_mlp_versions_serving_the_first()

    def failing(name: str) -> None:
        raise RuntimeError("a front end failed")

    engine.on_ready.append(failing)
    files["now"] = "v2"
    del versions["v1"]
    gc.disable()
    try:
        with pytest.raises(RuntimeError, match="a front end failed"):
            engine.load_sync("mlp")
        assert released.wait(10)
    finally:
        gc.enable()
        engine.stop(1.0)


def test_an_unload_retires_every_version_still_running_not_only_the_newest():
    versions = {"v1": _version(1.0, 2, "v1"), "v2": _version(5.0, 3, "v2"),
                "v3": _version(7.0, 2, "v3")}
    files = {"now": "v1"}
    engine = _engine_over(versions, files, "scale")
    engine.load_sync("scale")

    async def go():
        before = asyncio.ensure_future(engine.infer("scale", {"x": X[:1]}))
        await asyncio.sleep(0)  # queued for v1
        files["now"] = "v2"
        engine.load_sync("scale")  # a reload: v1 still runs its request
        await engine.unload("scale")
        files["now"] = "v3"
        engine.load_sync("scale")
        engine.start()
        return await asyncio.gather(before, return_exceptions=True)

    try:
        (before,) = asyncio.run(go())
    finally:
        engine.stop(1.0)
    assert isinstance(before, ModelNotReady) and "was unloaded" in str(before)
