"""ModelMesh mode against a real runtime process: the model-runtime calls ModelMesh makes,
v2 gRPC inference (tritonclient.grpc) on the models it loaded, and a latency-critical gRPC
model preempting REST batch work."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from e2e.modelmesh_play import CLASSIFIER, DETECTOR, play, stage
from e2e.server import RuntimeProcess, free_port

pytestmark = pytest.mark.e2e

# The controller's table, keyed by InferenceService name; the runtime serves the models under
# their ModelMesh ids (<name>__isvc-<hash>) and must find them here.
PRIORITIES = {"models": {
    "detector": {"priority": "latency-critical", "slo_ms": 25},
    "classifier": {"priority": "batch"},
}}


@pytest.fixture(scope="module")
def mesh_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelmesh")
    (root / "empty").mkdir()
    (root / "priorities.yaml").write_text(yaml.safe_dump(PRIORITIES))
    port = free_port()
    server = RuntimeProcess(
        "--model_dir", str(root / "empty"), "--modelmesh_port", str(port),
        "--memory_budget_mb", "1024", "--priority_config", str(root / "priorities.yaml"),
        log_path=root / "runtime.log",
    )
    with server:
        server.modelmesh = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        server.data = f"127.0.0.1:{server.grpc_port}"  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def mesh(mesh_server):
    from runtime.modelmesh.stubs import pb, pb_grpc

    with grpc.insecure_channel(mesh_server.modelmesh) as channel:
        yield pb, pb_grpc.ModelRuntimeStub(channel)


def load(mesh, model_id: str, path: Path) -> int:
    pb, stub = mesh
    return stub.loadModel(pb.LoadModelRequest(modelId=model_id, modelPath=str(path)),
                          timeout=300).sizeInBytes


def unload(mesh, *ids: str) -> None:
    pb, stub = mesh
    for model_id in ids:
        stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))


def images(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, side, side), dtype=np.float32)


def grpc_infer(client, model_id: str, x: np.ndarray, datatype: str = "FP32", name="image",
               **kw):
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer(model_id, [tensor], **kw)


def test_modelmesh_play(mesh_server, tmp_path):
    report = play(mesh_server.modelmesh, mesh_server.data, tmp_path, say=lambda _: None)
    assert set(report.sizes) == {DETECTOR, CLASSIFIER}
    assert report.shapes == {DETECTOR: (2, 16), CLASSIFIER: (2, 1000)}


def grpc_code(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status())


def test_v2_grpc_on_a_modelmesh_model_and_its_error_codes(mesh_server, mesh, tmp_path):
    paths = stage(tmp_path, {DETECTOR: "detector"})
    load(mesh, DETECTOR, paths[DETECTOR])
    client = grpcclient.InferenceServerClient(mesh_server.data)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(DETECTOR)
        out = grpc_infer(client, DETECTOR, images(1, 96), priority=1,
                         timeout=10_000_000)
        assert out.as_numpy("scores").shape == (1, 16)
        assert out.get_response().model_name == DETECTOR

        not_found, invalid = "StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"
        assert grpc_code(lambda: grpc_infer(client, "ghost__isvc-00", images(1, 96))) == not_found
        assert grpc_code(lambda: client.get_model_metadata("ghost__isvc-00")) == not_found
        assert grpc_code(lambda: grpc_infer(client, DETECTOR, images(1, 64))) == invalid
        assert grpc_code(lambda: grpc_infer(client, DETECTOR, images(5, 96))) == invalid
        assert grpc_code(lambda: grpc_infer(
            client, DETECTOR, np.zeros((1, 3, 96, 96), np.int32), "INT32")) == invalid
        assert grpc_code(lambda: grpc_infer(client, DETECTOR, images(1, 96), name="x")) == invalid

        # the REST edge serves the same model, and its answers are unchanged
        base = f"http://{mesh_server.url}"
        rest = httpclient.InferenceServerClient(mesh_server.url)
        tensor = httpclient.InferInput("image", [1, 3, 96, 96], "FP32")
        tensor.set_data_from_numpy(images(1, 96))
        assert rest.infer(DETECTOR, [tensor]).as_numpy("scores").shape == (1, 16)
        assert httpx.post(f"{base}/v2/models/ghost/infer", content=b"{}").status_code == 404

        unload(mesh, DETECTOR)
        assert grpc_code(lambda: grpc_infer(client, DETECTOR, images(1, 96))) == not_found
    finally:
        unload(mesh, DETECTOR)
        client.close()


def test_latency_critical_grpc_overtakes_rest_batch_work(mesh_server, mesh, tmp_path):
    """REST clients keep the batch classifier busy; gRPC detector requests still finish
    fast, and every request gets an answer. The detector is latency-critical only through
    the priority table's entry for its InferenceService name."""
    paths = stage(tmp_path, {DETECTOR: "detector", CLASSIFIER: "classifier"})
    config = paths[DETECTOR] / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    settings.pop("priority"), settings.pop("slo_ms")
    config.write_text(yaml.safe_dump(settings))
    load(mesh, DETECTOR, paths[DETECTOR])
    load(mesh, CLASSIFIER, paths[CLASSIFIER])

    stop = threading.Event()
    answered = {"batch": 0, "errors": 0}
    batch_times: list[float] = []

    def batch_client() -> None:
        rest = httpclient.InferenceServerClient(mesh_server.url, network_timeout=120)
        tensor = httpclient.InferInput("image", [8, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(images(8, 224, 1), binary_data=True)
        while not stop.is_set():
            began = time.perf_counter()
            try:
                rest.infer(CLASSIFIER, [tensor])
                answered["batch"] += 1
                batch_times.append(time.perf_counter() - began)
            except InferenceServerException:
                answered["errors"] += 1

    threads = [threading.Thread(target=batch_client) for _ in range(2)]
    for t in threads:
        t.start()
    client = grpcclient.InferenceServerClient(mesh_server.data)
    try:
        time.sleep(1.0)  # the batch work is running
        latencies = []
        x = images(1, 96, 2)
        for _ in range(30):
            began = time.perf_counter()
            assert grpc_infer(client, DETECTOR, x).as_numpy("scores").shape == (1, 16)
            latencies.append(time.perf_counter() - began)
            time.sleep(0.03)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        client.close()
        unload(mesh, DETECTOR, CLASSIFIER)
    assert answered["errors"] == 0 and answered["batch"] > 0
    # the detector ran as latency-critical: its class came from the table, under its name
    metrics = httpx.get(f"http://{mesh_server.url}/metrics").text.splitlines()
    ran_as = {line.split("priority=")[1].split('"')[1] for line in metrics
              if line.startswith("deft_requests_total{") and f'model="{DETECTOR}"' in line}
    assert ran_as == {"latency-critical"}, ran_as
    batch_p50 = sorted(batch_times)[len(batch_times) // 2]
    lc_p50 = sorted(latencies)[len(latencies) // 2]
    assert lc_p50 < batch_p50 / 2, (lc_p50, batch_p50)
