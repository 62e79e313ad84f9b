"""``controller.kube.KubernetesApi`` with the real Kubernetes client against a loopback server
that speaks just enough of the API (lists, a watch stream, ConfigMaps, Events, errors)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from controller.errors import (
    AlreadyExists,
    PermanentApiError,
    TemporaryApiError,
    WatchExpired,
)
from controller.kube import KubernetesApi
from controller.objects import INFERENCE_SERVICES, TRAINED_MODELS

ROOT = Path(__file__).resolve().parents[2]

ISVC = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "m", "namespace": "ns", "resourceVersion": "11", "uid": "u-m",
                     "annotations": {"deft.dev/priority": "latency-critical",
                                     "deft.dev/slo-ms": "15"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "pytorch-export"},
                                         "runtime": "deft", "storageUri": "gs://b/m"}}}}


class FakeApiServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, dict, object]] = []
        self.configmaps: dict[str, dict] = {}
        self.events: dict[str, dict] = {}
        self.watch_lines: list[dict] = []
        self.hold_watches: threading.Event | None = None  # watches wait on it, as real ones do
        self.configmap_created = threading.Event()
        self.event_created = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                server.requests.append((self.command, url.path, query, dict(self.headers), body))
                status, payload = server.route(self.command, url.path, query, body)
                if isinstance(payload, list):  # a watch stream: one JSON object per line
                    data = b"".join(json.dumps(line).encode() + b"\n" for line in payload)
                else:
                    data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that go away mid-watch are expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def status(code: int, reason: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "code": code, "reason": reason, "message": reason}

    def route(self, method: str, path: str, query: dict, body: object) -> tuple[int, object]:
        parts = path.strip("/").split("/")
        if "forbidden" in parts:
            return self.status(403, "Forbidden")
        if "flaky" in parts:
            return self.status(503, "ServiceUnavailable")
        if parts[0] == "apis":
            if query.get("watch") == "true":
                if self.hold_watches is not None:
                    self.hold_watches.wait(60)
                return 200, self.watch_lines
            return 200, {"kind": "List", "metadata": {"resourceVersion": "10"},
                         "items": [ISVC] if parts[-1] == "inferenceservices" else []}
        kind = parts[4]
        store = self.configmaps if kind == "configmaps" else self.events
        if method == "POST":
            name = body["metadata"]["name"]
            if name in store:
                return self.status(409, "AlreadyExists")
            store[name] = body
            (self.configmap_created if kind == "configmaps" else self.event_created).set()
            return 201, body
        name = parts[5]
        if name not in store:
            return self.status(404, "NotFound")
        if method == "PATCH":
            store[name] = {**store[name], **body}
        return 200, store[name]


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    s = FakeApiServer()
    yield s
    s.close()


def make_api(url: str) -> KubernetesApi:
    from kubernetes import client

    config = client.Configuration()
    config.host = url
    config.retries = 0
    return KubernetesApi(client.ApiClient(config), request_timeout_s=5)


def test_list_namespaced_and_cluster(server):
    api = make_api(server.url)
    result = api.list_objects(INFERENCE_SERVICES, "ns")
    assert result.resource_version == "10" and [i["metadata"]["name"] for i in result.items] == [
        "m"]
    assert api.list_objects(TRAINED_MODELS, None).items == []
    paths = [r[1] for r in server.requests]
    assert paths == ["/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices",
                     "/apis/serving.kserve.io/v1alpha1/trainedmodels"]


def test_watch_streams_events_then_410(server):
    server.watch_lines = [
        {"type": "ADDED", "object": ISVC},
        {"type": "BOOKMARK", "object": {"kind": "InferenceService",
                                        "metadata": {"resourceVersion": "12"}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                     "message": "too old resource version"}},
    ]
    api = make_api(server.url)
    seen = []
    with pytest.raises(WatchExpired):
        for event in api.watch_objects(INFERENCE_SERVICES, "ns", "10", timeout_s=30):
            seen.append((event.type, event.object["metadata"].get("name")))
    assert seen == [("ADDED", "m"), ("BOOKMARK", None)]
    query = server.requests[-1][2]
    assert query["watch"] == "true" and query["resourceVersion"] == "10"
    assert query["timeoutSeconds"] == "30" and query["allowWatchBookmarks"] == "true"


def test_watch_that_ends_normally(server):
    server.watch_lines = [{"type": "DELETED", "object": ISVC}]
    api = make_api(server.url)
    events = list(api.watch_objects(TRAINED_MODELS, None, "5", timeout_s=1))
    assert [e.type for e in events] == ["DELETED"]


def test_configmap_get_create_patch(server):
    api = make_api(server.url)
    assert api.get_configmap("ns", "deft-priorities") is None
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "deft-priorities", "namespace": "ns", "labels": {"a": "b"}},
            "data": {"priorities.yaml": "models: {}\n"}}
    api.create_configmap("ns", body)
    with pytest.raises(AlreadyExists):
        api.create_configmap("ns", body)
    live = api.get_configmap("ns", "deft-priorities")
    assert live["data"] == {"priorities.yaml": "models: {}\n"}
    assert live["metadata"]["labels"] == {"a": "b"}
    api.patch_configmap("ns", "deft-priorities", {"data": {"priorities.yaml": "x"}})
    method, path, _, headers, sent = server.requests[-1]
    assert (method, path) == ("PATCH", "/api/v1/namespaces/ns/configmaps/deft-priorities")
    assert "patch" in headers["Content-Type"] and sent == {"data": {"priorities.yaml": "x"}}


def test_event_create_conflict_and_patch(server):
    api = make_api(server.url)
    body = {
        "metadata": {"name": "m.abc", "namespace": "ns"},
        "involvedObject": {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                           "name": "m", "namespace": "ns", "uid": "u1"},
        "type": "Warning", "reason": "InvalidPriorityAnnotation", "message": "bad",
        "source": {"component": "deft-controller"}, "reportingComponent": "deft-controller",
        "reportingInstance": "pod-1", "firstTimestamp": "2025-01-01T00:00:00Z",
        "lastTimestamp": "2025-01-01T00:00:00Z", "count": 1,
    }
    api.create_event("ns", body)
    sent = server.events["m.abc"]
    assert sent["involvedObject"]["uid"] == "u1" and sent["reason"] == body["reason"]
    assert sent["firstTimestamp"].startswith("2025-01-01T00:00:00")
    assert sent["source"] == {"component": "deft-controller"}
    with pytest.raises(AlreadyExists):
        api.create_event("ns", body)
    api.patch_event("ns", "m.abc", {"lastTimestamp": "2025-01-01T00:01:00Z"})
    assert server.requests[-1][0] == "PATCH"


def test_http_errors_are_classified(server):
    api = make_api(server.url)
    with pytest.raises(PermanentApiError) as exc:
        api.list_objects(INFERENCE_SERVICES, "forbidden")
    assert exc.value.status == 403
    with pytest.raises(TemporaryApiError) as exc:
        api.get_configmap("flaky", "deft-priorities")
    assert exc.value.status == 503
    with pytest.raises(PermanentApiError):
        api.create_event("forbidden", {"metadata": {"name": "x", "namespace": "forbidden"},
                                       "involvedObject": {}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_controller_process_against_a_fake_api(server, tmp_path):
    """``python -m controller`` end to end: kubeconfig, list, ConfigMap, Event, metrics,
    and a clean exit on SIGTERM."""
    server.hold_watches = threading.Event()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
        "users": [{"name": "me", "user": {}}],
    }))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--kubeconfig", str(kubeconfig), "--namespace",
         "ns", "--metrics_port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.event_created.wait(60), proc.stderr.read() if proc.poll() else ""
        table = yaml.safe_load(server.configmaps["deft-priorities"]["data"]["priorities.yaml"])
        assert table == {"models": {"m": {"priority": "latency-critical", "slo_ms": 15}}}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'deft_controller_configmap_writes_total{operation="create"} 1.0' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "watching namespace ns" in proc.stderr.read()
    finally:
        server.hold_watches.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unreachable_server_is_temporary():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = make_api(f"http://127.0.0.1:{port}")
    with pytest.raises(TemporaryApiError):
        api.list_objects(INFERENCE_SERVICES, "ns")
    with pytest.raises(TemporaryApiError):
        list(api.watch_objects(INFERENCE_SERVICES, "ns", "1", timeout_s=1))
