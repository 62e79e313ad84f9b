"""The runtime as a real process, driven by tritonclient and httpx."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from e2e.server import RuntimeProcess

pytestmark = pytest.mark.e2e


def image(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, side, side), dtype=np.float32)


def infer(client, model, x, binary=True, **kw):
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [inp], **kw)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_json_and_binary(demo_server, binary):
    client = httpclient.InferenceServerClient(demo_server.url)
    assert client.is_server_ready()
    meta = client.get_model_metadata("detector")
    assert meta["inputs"][0]["shape"] == [-1, 3, 96, 96]
    x = image(1, 96)
    a = infer(client, "detector", x, binary).as_numpy("scores")
    b = infer(client, "detector", x, not binary).as_numpy("scores")
    assert a.shape == (1, 16)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    out = infer(client, "classifier", image(2, 224), binary).as_numpy("logits")
    assert out.shape[0] == 2


def test_errors_over_http(demo_server):
    base = f"http://{demo_server.url}"
    r = httpx.post(f"{base}/v2/models/ghost/infer", content=b"{}")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{base}/v2/models/detector/infer", content=b"{broken")
    assert r.status_code == 400 and "error" in r.json()
    client = httpclient.InferenceServerClient(demo_server.url)
    with pytest.raises(InferenceServerException):
        infer(client, "detector", image(1, 64))
    assert infer(client, "detector", image(1, 96)).as_numpy("scores").shape == (1, 16)
    assert "deft_request_latency_seconds" in httpx.get(f"{base}/metrics").text


def test_latency_critical_requests_overtake_running_batch_inference(demo_server):
    """Batch clients keep the classifier busy; detector requests still finish fast, and
    every request gets an answer."""
    stop = threading.Event()
    answered = {"classifier": 0, "errors": 0}
    batch_times: list[float] = []

    def batch_client():
        c = httpclient.InferenceServerClient(demo_server.url)
        x = image(8, 224, 1)
        while not stop.is_set():
            t = time.perf_counter()
            try:
                infer(c, "classifier", x)
                answered["classifier"] += 1
                batch_times.append(time.perf_counter() - t)
            except InferenceServerException:
                answered["errors"] += 1

    threads = [threading.Thread(target=batch_client) for _ in range(2)]
    for t in threads:
        t.start()
    client = httpclient.InferenceServerClient(demo_server.url)
    x = image(1, 96, 2)
    time.sleep(1.0)
    latencies = []
    for _ in range(30):
        t = time.perf_counter()
        infer(client, "detector", x)
        latencies.append(time.perf_counter() - t)
        time.sleep(0.03)
    stop.set()
    for t in threads:
        t.join()
    assert answered["errors"] == 0 and answered["classifier"] > 0
    batch_p50 = sorted(batch_times)[len(batch_times) // 2]
    det_p50 = sorted(latencies)[len(latencies) // 2]
    # a detector request does not wait for a batch inference to finish
    assert det_p50 < batch_p50 / 2, (det_p50, batch_p50)


def batches_in_flight(server: RuntimeProcess, results: list[object], n: int = 3):
    """``n`` classifier batches of 8, each from a thread and client of its own, started and
    admitted (each takes far longer than the second waited here); answers go to ``results``."""

    def call():
        c = httpclient.InferenceServerClient(server.url, network_timeout=120)
        try:
            results.append(infer(c, "classifier", image(8, 224)).as_numpy("logits").shape)
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    return threads


def test_sigterm_finishes_accepted_requests_and_exits(tmp_path):
    server = RuntimeProcess("--demo", log_path=tmp_path / "log").start()
    results: list[object] = []
    threads = batches_in_flight(server, results)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    code = server.proc.wait(60)
    assert code == 0, server.log()
    assert results == [(8, 1000)] * 3, results


def test_grpc_serves_models_loaded_through_the_repository_api(tmp_path):
    import tritonclient.grpc as grpcclient

    with RuntimeProcess("--demo", log_path=tmp_path / "log") as server:
        base = f"http://{server.url}"
        assert httpx.post(f"{base}/v2/repository/models/detector/unload").status_code == 200
        r = httpx.post(f"{base}/v2/repository/models/detector/load", timeout=120)
        assert r.status_code == 200
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = image(1, 96)
        inp = grpcclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("detector", [inp]).as_numpy("scores").shape == (1, 16)
        # tritonclient's own repository calls: the index as REST gives it, unload and load
        rest = httpx.post(f"{base}/v2/repository/index").json()
        index = client.get_model_repository_index(as_json=True)["models"]
        assert index == rest and {m["name"] for m in index} == {"classifier", "detector"}
        client.unload_model("classifier")
        assert [m["name"] for m in client.get_model_repository_index(
            as_json=True)["models"] if m.get("state") == "READY"] == ["detector"]
        client.load_model("classifier")
        assert client.is_model_ready("classifier")
        # a message past gRPC's 4 MiB and KServe's 8 MiB reaches the model's checks
        big = image(16, 224)  # 9.6 MB
        too_many = grpcclient.InferInput("image", list(big.shape), "FP32")
        too_many.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException, match="max batch size"):
            client.infer("classifier", [too_many])


def test_sigterm_stops_grpc_at_once_while_http_drains(tmp_path):
    import tritonclient.grpc as grpcclient

    server = RuntimeProcess("--demo", log_path=tmp_path / "log").start()
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    det = grpcclient.InferInput("image", [1, 3, 96, 96], "FP32")
    det.set_data_from_numpy(image(1, 96))
    assert grpc.infer("detector", [det]).as_numpy("scores").shape == (1, 16)
    results: list[object] = []
    threads = batches_in_flight(server, results)  # they keep HTTP draining for a while
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("detector", [det])
    assert "UNAVAILABLE" in str(refused.value.status()), refused.value
    for t in threads:
        t.join(60)
    assert server.proc.wait(60) == 0, server.log()
    assert results == [(8, 1000)] * 3, results


def test_a_model_loaded_again_after_its_files_changed_serves_the_new_version(tmp_path):
    """Clients keep sending while the files change and tritonclient loads the model again:
    each is answered by one version or the other, none fails, and then the new one serves."""
    from tests.runtime.helpers import write_model

    write_model(tmp_path / "models" / "scale", 1.0, 2)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with RuntimeProcess("--model_dir", str(tmp_path / "models"),
                        env={"DEFT_CACHE_DIR": str(tmp_path / "cache")},
                        log_path=tmp_path / "log") as server:
        client = httpclient.InferenceServerClient(server.url)

        def ask() -> np.ndarray:
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("scale", [inp]).as_numpy("y")

        np.testing.assert_allclose(ask(), x, atol=1e-4)
        answers: list[object] = []
        done = threading.Event()

        def keep_asking() -> None:
            own = httpclient.InferenceServerClient(server.url)
            while not done.is_set():
                inp = httpclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                try:
                    answers.append(own.infer("scale", [inp]).as_numpy("y"))
                except InferenceServerException as exc:
                    answers.append(exc)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            write_model(tmp_path / "models" / "scale", 3.0, 4)
            client.load_model("scale")
            np.testing.assert_allclose(ask(), 3 * x, atol=1e-4)
        finally:
            done.set()
            asker.join(30)
        errors = [a for a in answers if isinstance(a, Exception)]
        assert not errors, errors
        scales = {round(float(a[1, 1] / x[1, 1]), 3) for a in answers}  # type: ignore[index]
        assert scales <= {1.0, 3.0} and len(answers) > 3, (scales, len(answers))
        assert "files changed" in server.log()
